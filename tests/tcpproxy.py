"""A TCP proxy on loopback that a test can cut and restore: the database "goes down" and "comes back"
without touching the machine's real PostgreSQL service (other people use it).

Modes: ``open`` forwards bytes both ways; ``cut()`` resets every live connection and every new one (the
database crashed or restarted: the client sees ECONNRESET/refusal at once); ``reset_after_request()`` reads
the client's first bytes and then resets (an upstream that dies on the request); ``blackhole()`` accepts
connections and keeps them open but forwards nothing (a network partition: the client sees silence).
``restore()`` forwards again; connections frozen by a blackhole are reset, as after a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from types import TracebackType

from tests.servers import free_port


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN, as a crashed server's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` in a background thread with its own loop."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.mode = "open"
        self.connections = 0  # accepted since start, whatever the mode
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    def cut(self) -> None:
        """Reset live connections and every new one until ``restore``."""
        self._call(self._set_mode("cut"))

    def reset_after_request(self) -> None:
        """Read each new connection's first bytes, then reset it, until ``restore``."""
        self._call(self._set_mode("reset"))

    def blackhole(self) -> None:
        """Accept but forward nothing (live connections freeze) until ``restore``."""
        self._call(self._set_mode("blackhole"))

    def restore(self) -> None:
        """Forward again; connections frozen by a blackhole are reset first."""
        self._call(self._set_mode("open"))

    async def _set_mode(self, mode: str) -> None:
        previous, self.mode = self.mode, mode
        if mode == "cut" or (mode == "open" and previous == "blackhole"):
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "cut":
            _reset(writer)
            return
        if self.mode == "reset":
            await reader.read(65536)
            _reset(writer)
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            return  # held open by _writers, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while self.mode == "blackhole":  # a partition: hold the bytes, say nothing
                if writer.is_closing():
                    return
                await asyncio.sleep(0.05)
            if writer.is_closing():
                return
            writer.write(data)
            await writer.drain()
        if not writer.is_closing():
            writer.write_eof() if writer.can_write_eof() else writer.close()
