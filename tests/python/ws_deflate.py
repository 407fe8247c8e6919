"""A real permessage-deflate WebSocket peer for sockgate's end-to-end tests.

backend: echo server with compression on 127.0.0.1, prints its port, runs until stdin closes.
client URL N: sends N compressible text and binary messages, checks each echo, closes with
1000, prints one JSON line with what it saw.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def backend():
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, compression="deflate") as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


async def client(url, count):
    seen = {"extensions": None, "echoed": 0, "mismatches": 0, "close_code": None}
    async with connect(url, compression="deflate", max_size=None) as ws:
        seen["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        for i in range(count):
            text = f"message {i} " + "compressible " * 200
            await ws.send(text)
            if await ws.recv() != text:
                seen["mismatches"] += 1
            data = bytes([i % 251]) * 10000
            await ws.send(data)
            if await ws.recv() != data:
                seen["mismatches"] += 1
            seen["echoed"] += 2
        await ws.close(1000, "done")
        seen["close_code"] = ws.close_code
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        asyncio.run(backend())
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
