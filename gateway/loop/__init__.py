"""The closed loop's offline side: what the request log says routing did and saved (``report``), and training a
pool's router from its labelled requests (``train``). The serving side (shadows, versions, reload) is in
``gateway.routing``."""
