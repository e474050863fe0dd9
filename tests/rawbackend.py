"""A backend on loopback that answers with exactly the bytes a test scripts: for answers no well-behaved server
framework would send (20 000 headers, a body that trickles a byte at a time, 5 MB without an event separator).

``RawBackend(script)`` serves on 127.0.0.1 in a thread of its own; for each request it reads the head and body,
then calls ``await script(request, writer)``, which writes what it likes (``writer`` is an asyncio
``StreamWriter``; the connection closes when the script returns). ``requests`` counts the requests seen and
``bodies`` keeps them parsed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Script = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[None]]


def head(status: str = "200 OK", ctype: str = "application/json", length: int | None = None,
         extra: bytes = b"") -> bytes:
    """A response head; ``length`` None means ``Connection: close`` with no length (the body runs to the end)."""
    size = b"" if length is None else b"content-length: %d\r\n" % length
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + ctype.encode() + b"\r\n" + size + extra
            + b"connection: close\r\n\r\n")


class RawBackend:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawBackend:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in raw.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            self.requests += 1
            self.bodies.append(body)
            await self.script(body, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the gateway gave up on us: that is what most scripts are for
        finally:
            writer.close()
