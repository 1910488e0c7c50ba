"""KV cache events over ZMQ, in vLLM 0.32's wire format.

Multipart messages [topic, 8-byte big-endian sequence, msgpack payload]; the payload is
[timestamp, [event, ...], data_parallel_rank], each event a map tagged by "type":
BlockStored (block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
lora_name), BlockRemoved (block_hashes, medium), AllBlocksCleared. Block hashes are the low
64 bits of the digests, as vLLM sends them by default, or the digests themselves with
VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0. Like vLLM, the publisher binds when the endpoint is
a wildcard, ipc:// or inproc:// and connects otherwise (llm-d's EPP binds the SUB).
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import zmq

from pdserve.block_hashes import event_key
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


def _int_hashes() -> bool:
    return os.environ.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0"


def _hash(h: bytes | None, as_int: bool) -> bytes | int | None:
    return event_key(h) if as_int and h is not None else h


def encode(event: CacheEvent, block_size: int, as_int: bool = True) -> dict[str, Any]:
    kind = event[0]
    if kind == "stored":
        _, hashes, parent, tokens, lora_id = event
        return {
            "type": "BlockStored",
            "block_hashes": [_hash(h, as_int) for h in hashes],
            "parent_block_hash": _hash(parent, as_int),
            "token_ids": list(tokens),
            "block_size": block_size,
            "lora_id": lora_id,
            "medium": "GPU",
            "lora_name": f"lora-{lora_id}" if lora_id else None,
        }
    if kind == "removed":
        return {
            "type": "BlockRemoved",
            "block_hashes": [_hash(h, as_int) for h in event[1]],
            "medium": "GPU",
        }
    return {"type": "AllBlocksCleared"}


class KVEventPublisher:
    def __init__(self, cfg: dict[str, Any], block_size: int, dp_rank: int = 0) -> None:
        self.block_size = block_size
        self.dp_rank = dp_rank
        self.int_hashes = _int_hashes()
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
        self.pending: list[dict[str, Any]] = []

    def add(self, event: CacheEvent) -> None:
        self.pending.append(encode(event, self.block_size, self.int_hashes))

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
