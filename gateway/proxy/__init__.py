"""Calling the backends: the ranked list of a routing decision becomes one upstream answer.

``dispatch`` (retries, fallback, circuit ``breaker``) over the one upstream transport (``upstream`` is the seam,
``http1`` the HTTP/1.1 client behind it); ``streaming`` relays SSE event by event, ``scrub`` removes the backend's
key from what it relays, ``usage`` checks the token counts a backend reports, ``probe`` checks a backend is up.
"""
