"""The floor for `make bench-live`: a bare asyncio (uvloop) server that does nothing but hold streams.

It answers every request with a chunked `text/event-stream` response and an `unread_count` event,
then, for each line read on stdin, writes one event encoded once to every open connection. No
authentication, no database, no per-stream state: what the machine costs, for Herald to be held to.
"""

import asyncio
import json
import sys

import uvloop

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-store\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


async def serve(port: int) -> None:
    writers: set[asyncio.StreamWriter] = set()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunk(b'retry: 2000\n\nevent: unread_count\ndata: {"count":0}\n\n'))
        writers.add(writer)
        try:
            await reader.read()  # until the client leaves
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(stream, "127.0.0.1", port, backlog=4096)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("floor ready", flush=True)
    while title := (await stdin.readline()).decode().strip():
        data = json.dumps({"title": title}, separators=(",", ":"))
        event = chunk(f"event: notification\ndata: {data}\n\n".encode())
        for writer in writers:
            writer.write(event)
    server.close()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
