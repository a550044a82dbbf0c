"""A TCP proxy on loopback that can slow down, cut or refuse the traffic it forwards."""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay_s = 0.0  # added before forwarding each chunk
        self.reset = False  # accept, then abort with RST
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            if self.reset:
                cw.transport.abort()
                return
            ur, uw = await asyncio.open_connection(*self.target)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                while data := await r.read(65536):
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    w.write(data)
                    await w.drain()
                with contextlib.suppress(OSError):
                    w.write_eof()

            await asyncio.gather(pipe(cr, uw), pipe(ur, cw), return_exceptions=True)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            cw.close()
            self._tasks.discard(task)  # type: ignore[arg-type]
