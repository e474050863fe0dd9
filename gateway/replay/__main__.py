"""``python -m gateway.replay [--host] [--port] [--data] [--latency-ms] [--ms-per-token]``: same as
``poolgate replay`` (the gateway's ``serve`` starts the replay backend this way, as a child process)."""

from gateway.commands.replay import replay

if __name__ == "__main__":
    replay(prog_name="python -m gateway.replay")
