"""Open N Connect streams that never say Hello, then hold them until stdin closes.

Run as a process:  python -m tests.faults.idle_streams ADDRESS N
Prints "open N" once every stream is started, and per-status counts of how they ended.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import grpc
import grpc.aio

from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc

#: Streams per connection: under the server's HTTP/2 cap of 100.
PER_CHANNEL = 50


async def main(address: str, count: int) -> None:
    stop = asyncio.Event()
    ended: Counter[str] = Counter()

    async def silent() -> object:
        await stop.wait()
        return
        yield pb.NodeMessage()  # an async generator that never yields

    async def one(stub: pb_grpc.FederationStub) -> None:
        call = stub.Connect(silent())
        try:
            async for _ in call:
                pass
            ended["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            ended[exc.code().name] += 1

    # A local subchannel pool gives each channel its own TCP connection (by default they
    # share one, and the server's per-connection cap of 100 streams would apply to all).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(address, options=options) for _ in range(-(-count // PER_CHANNEL))
    ]
    tasks = [
        asyncio.ensure_future(one(pb_grpc.FederationStub(channels[i // PER_CHANNEL])))
        for i in range(count)
    ]
    await asyncio.sleep(1.0)
    print(f"open {count}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    for channel in channels:
        await channel.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(dict(ended), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
