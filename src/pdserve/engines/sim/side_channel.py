"""The side channel: how a decode engine gets a leased request's KV blocks from a prefill
engine.

Each engine serves it on VLLM_NIXL_SIDE_CHANNEL_HOST:PORT, as vLLM's NixlConnector does.
The consumer asks the producer for a leased request's blocks; the bytes then move either
over NIXL (the producer answers with its agent metadata and the blocks' descriptors) or
inline on this TCP stream. Both paths end with an xxh3-64 checksum check and a release
message that frees the lease (kv_release.py, which the decode sidecar sends too). Frames as
side_channel_frames.py reads them.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pdserve import kv_release
from pdserve.engines.sim.kv_arena import KVArena
from pdserve.engines.sim.nixl_transport import Nixl
from pdserve.side_channel_frames import frame, read_frame


class TransferError(Exception):
    pass


@dataclass
class Leased:
    blocks: list[int]
    checksum: int | None = None  # of all `blocks`, computed once when the lease was taken


# The producer's view of its own state, given by the engine.
LeaseLookup = Callable[[str], Leased | None]


class SideChannelServer:
    """Producer side: answers pulls for leased requests, frees leases on release."""

    def __init__(
        self,
        arena: KVArena,
        lookup: LeaseLookup,
        release: Callable[[str], bool],
        nixl: Nixl | None,
        fault: str | None = None,
    ) -> None:
        self.arena, self.lookup, self.release, self.nixl = arena, lookup, release, nixl
        self.fault = fault  # "corrupt" | "stall": fault injection for chaos tests
        self.server: asyncio.AbstractServer | None = None
        self.active = 0

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        poller = asyncio.create_task(self._poll()) if self.nixl else None
        try:
            while True:
                try:
                    msg, nbytes = await read_frame(reader.readexactly)
                    await reader.readexactly(nbytes)  # consumers send none
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await self._answer(msg, writer)
        finally:
            self.active -= 1
            if poller:
                poller.cancel()
            writer.close()

    async def _answer(self, msg: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        rid = str(msg.get("request_id"))
        if msg.get("op") == kv_release.OP:
            await _send(writer, kv_release.answer(self.release(rid)))
            return
        lease = self.lookup(rid)
        if lease is None or msg.get("op") != "pull":
            await _send(writer, {"ok": False, "error": f"no KV held for request {rid!r}"})
            return
        blocks = list(msg.get("block_ids", lease.blocks))
        if not set(blocks) <= set(lease.blocks):
            await _send(writer, {"ok": False, "error": f"blocks not held for request {rid!r}"})
            return
        checksum = lease.checksum  # computed once at lease time for the whole set
        if checksum is None or blocks != lease.blocks:
            checksum = self.arena.checksum(blocks)
        if self.fault == "corrupt":
            checksum ^= 1
        if self.fault == "stall":
            await asyncio.Event().wait()
        header: dict[str, Any] = {"ok": True, "checksum": checksum, "block_ids": blocks}
        if msg.get("transport") == "nixl" and self.nixl is not None:
            header["nixl_meta"] = base64.b64encode(self.nixl.metadata()).decode()
            header["nixl_descs"] = base64.b64encode(self.nixl.descs(blocks)).decode()
            await _send(writer, header)
        else:
            await _send(writer, header, [self.arena.view(b) for b in blocks])

    async def _poll(self) -> None:
        assert self.nixl is not None
        while True:
            self.nixl.poll()
            await asyncio.sleep(0.001)


async def _send(
    writer: asyncio.StreamWriter, header: dict[str, Any], payload: Sequence[memoryview] = ()
) -> None:
    """A header, then the payload written straight from the arena's buffers."""
    writer.write(frame(header, sum(len(v) for v in payload)))
    for view in payload:
        writer.write(view)
    await writer.drain()


@dataclass
class PullResult:
    nbytes: int
    transport: str
    seconds: float


async def pull(
    host: str,
    port: int,
    request_id: str,
    remote_blocks: Sequence[int],
    local_blocks: Sequence[int],
    arena: KVArena,
    nixl: Nixl | None,
    timeout: float,
) -> PullResult:
    """Consumer side: fetch the blocks into `local_blocks`, verify, release the lease."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(timeout):
            conn = await _Conn.open(host, port)
            try:
                count, transport = await _fetch(
                    conn, request_id, remote_blocks, local_blocks, arena, nixl
                )
            finally:
                conn.close()
    except TimeoutError as err:
        raise TransferError(f"KV pull from {host}:{port} timed out after {timeout:g}s") from err
    except (OSError, asyncio.IncompleteReadError) as err:
        raise TransferError(
            f"KV pull from {host}:{port} failed: {err or type(err).__name__}"
        ) from err
    return PullResult(count * arena.block_bytes, transport, loop.time() - start)


class _Conn:
    """The consumer's end, on a raw non-blocking socket so that pulled bytes land straight
    in the arena's blocks (a StreamReader would buffer and copy them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.pending = 0  # payload bytes of the last header, not read yet

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        family, kind, proto, _, addr = (
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    async def send(self, header: dict[str, Any]) -> None:
        await self.loop.sock_sendall(self.sock, frame(header))

    async def _into(self, view: memoryview) -> None:
        while view:
            n = await self.loop.sock_recv_into(self.sock, view)
            if n == 0:
                raise ConnectionResetError("producer closed the side channel")
            view = view[n:]

    async def _exact(self, n: int) -> bytes:
        buf = bytearray(n)
        await self._into(memoryview(buf))
        return bytes(buf)

    async def recv_header(self) -> dict[str, Any]:
        header, self.pending = await read_frame(self._exact)
        return header

    async def recv_payload(self, into: Sequence[memoryview]) -> None:
        """Fill `into` from the last header's payload; bytes beyond them are read and
        dropped."""
        for view in into:
            take = view[: max(0, min(len(view), self.pending))]
            await self._into(take)
            self.pending -= len(take)
        while self.pending > 0:
            self.pending -= len(await self._exact(min(self.pending, 1 << 20)))


async def _fetch(
    conn: _Conn,
    request_id: str,
    remote_blocks: Sequence[int],
    local_blocks: Sequence[int],
    arena: KVArena,
    nixl: Nixl | None,
) -> tuple[int, str]:
    """The blocks moved and the transport that moved them."""
    transport = "nixl" if nixl is not None else "tcp"
    await conn.send(
        {
            "op": "pull",
            "request_id": request_id,
            "block_ids": list(remote_blocks),
            "transport": transport,
        }
    )
    header = await conn.recv_header()
    if not header.get("ok"):
        raise TransferError(str(header.get("error", "producer refused the pull")))
    count = min(len(header["block_ids"]), len(local_blocks))
    blocks = list(local_blocks[:count])
    arena.overwritten(blocks)
    try:
        if "nixl_meta" in header and nixl is not None:
            meta, descs = (base64.b64decode(header[k]) for k in ("nixl_meta", "nixl_descs"))
            if not await nixl.read(meta, descs, blocks):
                raise TransferError("NIXL READ failed")
        else:
            transport = "tcp"
            await conn.recv_payload([arena.view(b) for b in blocks])
        intact = arena.checksum(blocks) == header["checksum"]
    finally:
        # Done with the lease either way: a failed READ must not strand the producer's
        # blocks until the lease expires (480 s by default).
        await conn.send(kv_release.message(request_id))
        await conn.recv_header()
    if not intact:
        raise TransferError(f"KV checksum mismatch for request {request_id!r}")
    return count, transport
