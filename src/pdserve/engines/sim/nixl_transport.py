"""KV bytes over NIXL: a one-sided READ from the producer's registered arena.

UCX backend without a progress thread: the consumer drives its READ to completion, the
producer polls notifications while a side channel connection is open. The side channel
carries the agents' metadata and the blocks' descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Sequence

from pdserve.engines.sim.kv_arena import KVArena


class Nixl:
    """A NIXL agent with the arena registered."""

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

    async def read(self, peer_meta: bytes, remote_descs: bytes, blocks: Sequence[int]) -> bool:
        """READ the peer's blocks into ours; False when the transfer failed."""
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
            return bool(state == "DONE")
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
