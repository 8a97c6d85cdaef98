"""A TCP forwarder on loopback that throttles one direction and cuts the link once.

Run as a process (so its threads and memory never count as the researcher's):
    python -m tests.faults.proxy LISTEN_PORT TARGET_PORT RATE_BYTES_PER_S CUT_AFTER_BYTES PAUSE_S
Node-to-researcher bytes are forwarded at RATE; once CUT_AFTER bytes went that way, every
connection is closed and new ones are refused for PAUSE seconds, then forwarding resumes.
Prints "listening", "cut at N bytes" and "restored" on stdout.
"""

from __future__ import annotations

import asyncio
import sys
import time

CHUNK = 16 << 10


class Proxy:
    def __init__(self, target: int, rate: float, cut_after: int, pause: float) -> None:
        self.target = target
        self.rate = rate
        self.cut_after = cut_after
        self.pause = pause
        self.upstream = 0
        self.cut_done = False
        self.closed_until = 0.0
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.closed_until:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(
            self.pipe(reader, up_writer, upstream=True),
            self.pipe(up_reader, writer, upstream=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self.writers.discard(w)
            w.close()

    async def pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await src.read(CHUNK):
                dst.write(data)
                await dst.drain()
                if upstream:
                    self.upstream += len(data)
                    await asyncio.sleep(len(data) / self.rate)
                    if not self.cut_done and self.upstream >= self.cut_after:
                        self.cut()
                        return
        finally:
            dst.close()

    def cut(self) -> None:
        self.cut_done = True
        self.closed_until = time.monotonic() + self.pause
        print(f"cut at {self.upstream} bytes", flush=True)
        for w in list(self.writers):
            w.transport.abort()  # RST, as a dropped link looks to both ends
        asyncio.get_running_loop().call_later(self.pause, lambda: print("restored", flush=True))


async def main(listen: int, target: int, rate: float, cut_after: int, pause: float) -> None:
    proxy = Proxy(target, rate, cut_after, pause)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, rate, cut_after, pause = sys.argv[1:6]
    asyncio.run(main(int(listen), int(target), float(rate), int(cut_after), float(pause)))
