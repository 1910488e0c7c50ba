"""Moving a request's KV blocks from a prefill engine to a decode engine.

Each engine owns a `KVArena` (one buffer of num_blocks x block_bytes) and serves a side
channel on VLLM_NIXL_SIDE_CHANNEL_HOST:PORT, as vLLM's NixlConnector does. The consumer asks
the producer for a leased request's blocks; the bytes then move either over NIXL (a one-sided
READ from the producer's registered memory) or inline over the side channel's TCP stream.
Both paths end with an xxh3-64 checksum check and a release message that frees the lease.

Frames on the side channel: 4-byte big-endian length, then a JSON header; a header with
`nbytes` is followed by one raw frame of that many bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from pdserve.errors import UserError

_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class KVConfig:
    """The parts of vLLM's --kv-transfer-config (and NIXL env) this engine acts on."""

    policy: str = "recompute"  # kv_load_failure_policy: recompute | fail
    transport: str = "nixl"  # kv_connector_extra_config.transport: nixl (if loadable) | tcp
    pull_timeout: float = 30.0  # kv_connector_extra_config.pull_timeout, seconds
    lease_seconds: float = 480.0  # env VLLM_NIXL_ABORT_REQUEST_TIMEOUT
    fault: str | None = None  # kv_connector_extra_config.fault: corrupt | stall (chaos tests)

    @classmethod
    def parse(cls, cfg: dict[str, Any] | None, env: Mapping[str, str]) -> KVConfig:
        cfg = cfg or {}
        extra = cfg.get("kv_connector_extra_config") or {}
        if not isinstance(extra, dict):
            raise UserError("--kv-transfer-config: kv_connector_extra_config must be an object")
        out = cls(
            policy=str(cfg.get("kv_load_failure_policy", "recompute")),
            transport=str(extra.get("transport", "nixl")),
            pull_timeout=_seconds(
                "kv_connector_extra_config.pull_timeout", extra.get("pull_timeout"), 30.0
            ),
            lease_seconds=_seconds(
                "VLLM_NIXL_ABORT_REQUEST_TIMEOUT", env.get("VLLM_NIXL_ABORT_REQUEST_TIMEOUT"), 480.0
            ),
            fault=extra.get("fault"),
        )
        for name, value, allowed in (
            ("kv_load_failure_policy", out.policy, ("recompute", "fail")),
            ("kv_connector_extra_config.transport", out.transport, ("nixl", "tcp")),
            ("kv_connector_extra_config.fault", out.fault, (None, "corrupt", "stall")),
        ):
            if value not in allowed:
                raise UserError(
                    f"--kv-transfer-config: {name} {value!r}: expected one of {allowed}"
                )
        return out


def _seconds(name: str, raw: Any, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected seconds, got {raw!r}") from None
    if value <= 0:
        raise UserError(f"{name}: must be positive, got {raw!r}")
    return value


class KVArena:
    """The engine's KV memory. Block contents are derived from the block's prefix hash, so
    any engine can tell what a correct block holds."""

    def __init__(self, num_blocks: int, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.buf = np.zeros(max(num_blocks * block_bytes, 8), dtype=np.uint8)
        self.seeds: list[int | None] = [None] * num_blocks  # what each block holds, if known

    def fill(self, block: int, seed: int) -> None:
        """Write a block's content for `seed`; a no-op when it already holds that."""
        if not self.block_bytes or self.seeds[block] == seed:
            return
        self.seeds[block] = seed
        bb = self.block_bytes
        view = self.buf[block * bb : (block + 1) * bb]
        words = bb // 8
        view[: words * 8].view(np.uint64)[:] = seed
        view[words * 8 :] = np.frombuffer(seed.to_bytes(8, "little"), dtype=np.uint8)[: bb % 8]

    def overwritten(self, blocks: Sequence[int]) -> None:
        """Bytes arrived from elsewhere: forget what these blocks were known to hold."""
        for b in blocks:
            self.seeds[b] = None

    def view(self, block: int) -> memoryview:
        bb = self.block_bytes
        return self.buf[block * bb : (block + 1) * bb].data

    def checksum(self, blocks: Sequence[int]) -> int:
        h = xxhash.xxh3_64()  # the fastest of the family: verification must not dominate a pull
        bb = self.block_bytes
        for b in blocks:
            h.update(self.buf[b * bb : (b + 1) * bb].data)
        return h.intdigest()

    def regions(self, blocks: Sequence[int]) -> list[tuple[int, int, int]]:
        base = self.buf.ctypes.data
        return [(base + b * self.block_bytes, self.block_bytes, 0) for b in blocks]


class Nixl:
    """A NIXL agent (UCX backend, no progress thread) with the arena registered."""

    def __init__(self, name: str, arena: KVArena) -> None:
        try:
            from nixl_cu12._api import nixl_agent, nixl_agent_config
        except ImportError:
            from nixl._api import nixl_agent, nixl_agent_config  # type: ignore[no-redef]
        _quiet_nixl_logs()
        self.agent = nixl_agent(name, nixl_agent_config(enable_prog_thread=False, backends=["UCX"]))
        self.arena = arena
        base = arena.buf.ctypes.data
        self.agent.register_memory([(base, arena.buf.nbytes, 0, "")], "DRAM")
        self.peers: dict[bytes, str] = {}

    def metadata(self) -> bytes:
        return self.agent.get_agent_metadata()

    def descs(self, blocks: Sequence[int]) -> bytes:
        return self.agent.get_serialized_descs(
            self.agent.get_xfer_descs(self.arena.regions(blocks), "DRAM")
        )

    def poll(self) -> None:
        self.agent.get_new_notifs()

    async def read(self, peer_meta: bytes, remote_descs: bytes, blocks: Sequence[int]) -> None:
        peer = self.peers.get(peer_meta)
        if peer is None:
            peer = self.peers[peer_meta] = self.agent.add_remote_agent(peer_meta)
        local = self.agent.get_xfer_descs(self.arena.regions(blocks), "DRAM")
        remote = self.agent.deserialize_descs(remote_descs)
        handle = self.agent.initialize_xfer("READ", local, remote, peer, b"pull")
        try:
            state = self.agent.transfer(handle)
            while state == "PROC":
                await asyncio.sleep(0)
                state = self.agent.check_xfer_state(handle)
            if state != "DONE":
                raise TransferError("NIXL READ failed")
        finally:
            self.agent.release_xfer_handle(handle)


def _quiet_nixl_logs() -> None:
    """NIXL installs its own plain-text stdout handler; send its warnings through ours so
    the engine's log stays JSON lines."""
    nixl_log = logging.getLogger("nixl")
    nixl_log.handlers.clear()
    nixl_log.propagate = True
    nixl_log.setLevel(logging.WARNING)


def make_nixl(arena: KVArena) -> Nixl | None:
    """NIXL when it is installed and loads; None means the TCP path."""
    try:
        return Nixl(f"pdserve-sim-{os.getpid()}-{uuid.uuid4().hex[:6]}", arena)
    except Exception:  # ImportError, or UCX failing to initialise on this host
        return None


class TransferError(Exception):
    pass


async def _send(
    writer: asyncio.StreamWriter, header: dict[str, Any], payload: Sequence[memoryview] = ()
) -> None:
    """A header frame, then (if any) one payload frame written straight from the buffers."""
    nbytes = sum(len(v) for v in payload)
    if nbytes:
        header = {**header, "nbytes": nbytes}
    raw = json.dumps(header).encode()
    writer.write(_LEN.pack(len(raw)) + raw)
    if nbytes:
        writer.write(_LEN.pack(nbytes))
        for view in payload:
            writer.write(view)
    await writer.drain()


async def _recv(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    (n,) = _LEN.unpack(await reader.readexactly(4))
    header = json.loads(await reader.readexactly(n))
    payload = b""
    if header.get("nbytes"):
        (m,) = _LEN.unpack(await reader.readexactly(4))
        payload = await reader.readexactly(m)
    return header, payload


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
        release: Callable[[str], None],
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
                    msg, _ = await _recv(reader)
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
        if msg.get("op") == "release":
            self.release(rid)
            await _send(writer, {"ok": True})
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
        return await asyncio.wait_for(
            _pull(host, port, request_id, remote_blocks, local_blocks, arena, nixl, start), timeout
        )
    except TimeoutError as err:
        raise TransferError(f"KV pull from {host}:{port} timed out after {timeout:g}s") from err
    except (OSError, asyncio.IncompleteReadError) as err:
        raise TransferError(
            f"KV pull from {host}:{port} failed: {err or type(err).__name__}"
        ) from err


async def release(host: str, port: int, request_id: str, timeout: float) -> None:
    """Consumer side, nothing to read: tell the producer to free the request's blocks."""

    async def go() -> None:
        conn = await _Conn.open(host, port)
        try:
            await conn.send({"op": "release", "request_id": request_id})
            await conn.recv_header()
        finally:
            conn.close()

    try:
        await asyncio.wait_for(go(), timeout)
    except (TimeoutError, OSError) as err:
        raise TransferError(f"KV release at {host}:{port} failed: {err!r}") from err


class _Conn:
    """The consumer's end of the side channel, on a raw non-blocking socket so that pulled
    bytes land straight in the arena's blocks (a StreamReader would buffer and copy them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

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
        raw = json.dumps(header).encode()
        await self.loop.sock_sendall(self.sock, _LEN.pack(len(raw)) + raw)

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
        (n,) = _LEN.unpack(await self._exact(4))
        return json.loads(await self._exact(n))

    async def recv_payload(self, header: dict[str, Any], into: Sequence[memoryview]) -> None:
        """Fill `into` from the payload frame; bytes beyond them are read and dropped."""
        if not header.get("nbytes"):
            return
        (total,) = _LEN.unpack(await self._exact(4))
        for view in into:
            take = view[: max(0, min(len(view), total))]
            await self._into(take)
            total -= len(take)
        while total > 0:
            total -= len(await self._exact(min(total, 1 << 20)))


async def _pull(
    host: str,
    port: int,
    request_id: str,
    remote_blocks: Sequence[int],
    local_blocks: Sequence[int],
    arena: KVArena,
    nixl: Nixl | None,
    start: float,
) -> PullResult:
    conn = await _Conn.open(host, port)
    try:
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
        if "nixl_meta" in header and nixl is not None:
            await nixl.read(
                base64.b64decode(header["nixl_meta"]),
                base64.b64decode(header["nixl_descs"]),
                blocks,
            )
        else:
            transport = "tcp"
            await conn.recv_payload(header, [arena.view(b) for b in blocks])
        intact = arena.checksum(blocks) == header["checksum"]
        await conn.send({"op": "release", "request_id": request_id})  # done with it either way
        await conn.recv_header()
        if not intact:
            raise TransferError(f"KV checksum mismatch for request {request_id!r}")
        return PullResult(
            count * arena.block_bytes, transport, asyncio.get_running_loop().time() - start
        )
    finally:
        conn.close()
