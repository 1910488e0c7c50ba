"""The side channel in one process: framing, pulls over TCP and NIXL into the arena."""

from __future__ import annotations

import asyncio

import pytest

from pdserve import kv_release
from pdserve.engines.sim import side_channel
from pdserve.engines.sim.kv_arena import KVArena
from pdserve.engines.sim.nixl_transport import make_nixl
from pdserve.engines.sim.side_channel import Leased, SideChannelServer, TransferError
from pdserve.process import free_port
from pdserve.side_channel_frames import frame, read_frame

BLOCKS, BLOCK_BYTES = 4, 1000  # not a multiple of 8: the tail of a block is filled too


async def test_a_frame_reads_back_with_its_payload_size() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(frame({"op": "x"}, 5) + b"12345" + frame({}))
    header, nbytes = await read_frame(reader.readexactly)
    assert (header, nbytes) == ({"op": "x", "nbytes": 5}, 5)
    assert await reader.readexactly(nbytes) == b"12345"
    assert await read_frame(reader.readexactly) == ({}, 0)


def _arenas() -> tuple[KVArena, KVArena]:
    src, dst = KVArena(BLOCKS, BLOCK_BYTES), KVArena(BLOCKS, BLOCK_BYTES)
    for b in range(BLOCKS):
        src.fill(b, 1000 + b)
    return src, dst


async def _serve(
    src: KVArena, nixl: bool, fault: str | None = None
) -> tuple[SideChannelServer, int, list[str]]:
    """A producer holding blocks 0-2 for request "r"; the list collects its releases."""
    released: list[str] = []
    lease = Leased([0, 1, 2], src.checksum([0, 1, 2]))
    server = SideChannelServer(
        src,
        lambda rid: lease if rid == "r" else None,
        released.append,
        make_nixl(src) if nixl else None,
        fault,
    )
    return server, await server.start("127.0.0.1", 0), released


@pytest.mark.parametrize("transport", ["tcp", "nixl"])
async def test_pulled_blocks_equal_the_producers_and_free_its_lease(transport: str) -> None:
    src, dst = _arenas()
    server, port, released = await _serve(src, transport == "nixl")
    local = make_nixl(dst) if transport == "nixl" else None
    if transport == "nixl" and local is None:
        pytest.skip("NIXL does not load here")
    try:
        # Two of the three leased blocks (the consumer has the first cached), into others.
        result = await side_channel.pull("127.0.0.1", port, "r", [1, 2], [3, 0], dst, local, 10)
    finally:
        await server.close()
    assert (result.nbytes, result.transport) == (2 * BLOCK_BYTES, transport)
    assert bytes(dst.view(3)) == bytes(src.view(1)) and bytes(dst.view(0)) == bytes(src.view(2))
    assert released == ["r"]


async def test_a_refused_or_corrupt_pull_is_a_transfer_error() -> None:
    src, dst = _arenas()
    server, port, _ = await _serve(src, nixl=False, fault="corrupt")
    try:
        with pytest.raises(TransferError, match="no KV held for request 'other'"):
            await side_channel.pull("127.0.0.1", port, "other", [0], [0], dst, None, 10)
        with pytest.raises(TransferError, match="checksum mismatch"):
            await side_channel.pull("127.0.0.1", port, "r", [0, 1, 2], [0, 1, 2], dst, None, 10)
    finally:
        await server.close()


class FailingRead:
    """A consumer whose NIXL READ fails (a UCX error mid-transfer)."""

    async def read(self, meta: bytes, descs: bytes, blocks: list[int]) -> bool:
        return False


async def test_a_failed_nixl_read_still_releases_the_producers_lease() -> None:
    src, dst = _arenas()
    server, port, released = await _serve(src, nixl=True)
    if server.nixl is None:
        pytest.fail("NIXL does not load here: `make install` puts it in .venv")
    try:
        with pytest.raises(TransferError, match="NIXL READ failed"):
            await side_channel.pull(
                "127.0.0.1",
                port,
                "r",
                [0, 1],
                [0, 1],
                dst,
                FailingRead(),
                10,  # type: ignore[arg-type]
            )
    finally:
        await server.close()
    assert released == ["r"]  # not held until the lease expires


async def test_a_release_without_a_pull_says_whether_the_producer_held_the_lease() -> None:
    """The message the sidecar sends too (pdserve.kv_release), answered by the sim producer."""
    held = {"r"}

    def free(rid: str) -> bool:
        was = rid in held
        held.discard(rid)
        return was

    server = SideChannelServer(KVArena(BLOCKS, BLOCK_BYTES), lambda rid: None, free, None)
    port = await server.start("127.0.0.1", 0)
    handle = {"remote_host": "127.0.0.1", "remote_port": port, "remote_request_id": "r"}
    try:
        assert await kv_release.release(handle, 10) == (True, None)
        assert await kv_release.release(handle, 10) == (False, None)  # freed already
    finally:
        await server.close()
    released, error = await kv_release.release({**handle, "remote_port": "x"}, 10)
    assert released is None and error is not None and "'x'" in error
    released, error = await kv_release.release({**handle, "remote_port": free_port()}, 10)
    assert released is None and error is not None and error.startswith("KV release at 127.0.0.1")
