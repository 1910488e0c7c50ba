"""KV cache events over ZMQ, in vLLM's wire format.

Multipart messages [topic, 8-byte big-endian sequence, msgpack payload]; the payload is
[timestamp, [event, ...], data_parallel_rank] with events
["BlockStored", hashes, parent_hash, token_ids, block_size, lora_id, medium],
["BlockRemoved", hashes, medium] and ["AllBlocksCleared"]. Like vLLM, the publisher binds
when the endpoint is a wildcard, ipc:// or inproc:// and connects otherwise (llm-d's EPP
binds the SUB).
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import zmq

from pdserve.engines.sim.block_manager import CacheEvent
from pdserve.errors import UserError


def enabled_config(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parsed `--kv-events-config`, or None when events are off."""
    if not cfg or not cfg.get("enable_kv_cache_events", False):
        return None
    publisher = cfg.get("publisher", "zmq")
    if publisher == "null":
        return None
    if publisher != "zmq":
        raise UserError(f"--kv-events-config: publisher {publisher!r} not supported (zmq)")
    return cfg


def encode(event: CacheEvent, block_size: int) -> list[Any]:
    kind = event[0]
    if kind == "stored":
        _, hashes, parent, tokens, lora_id = event
        return ["BlockStored", hashes, parent, tokens, block_size, lora_id, "GPU"]
    if kind == "removed":
        return ["BlockRemoved", event[1], "GPU"]
    return ["AllBlocksCleared"]


class KVEventPublisher:
    def __init__(self, cfg: dict[str, Any], block_size: int, dp_rank: int = 0) -> None:
        self.block_size = block_size
        self.dp_rank = dp_rank
        self.topic = str(cfg.get("topic", "")).encode()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        endpoint = str(cfg.get("endpoint", "tcp://*:5557"))
        bind = "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))
        try:
            (self.sock.bind if bind else self.sock.connect)(endpoint)
        except zmq.ZMQError as err:
            self.sock.close(0)
            raise UserError(f"--kv-events-config: endpoint {endpoint!r}: {err}") from err
        self.seq = 0
        self.pending: list[list[Any]] = []

    def add(self, event: CacheEvent) -> None:
        self.pending.append(encode(event, self.block_size))

    def flush(self) -> None:
        """One batch per engine step, as vLLM does."""
        if not self.pending:
            return
        payload = msgpack.packb([time.time(), self.pending, self.dp_rank], use_bin_type=True)
        self.pending = []
        self.sock.send_multipart([self.topic, self.seq.to_bytes(8, "big"), payload], copy=False)
        self.seq += 1

    def close(self) -> None:
        self.sock.close(0)
