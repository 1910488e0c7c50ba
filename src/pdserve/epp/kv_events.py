"""The ZMQ subscriber that feeds vLLM KV events to the precise prefix-cache scorer."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.logs import event

log = logging.getLogger("pdserve.epp")


async def subscribe(scorer: PrecisePrefixProducer, endpoint: str, bind: bool = True) -> None:
    """A SUB socket that binds (engines connect, as in llm-d) or connects to an engine that
    binds (vLLM binds a wildcard or ipc:// endpoint), applying every event batch."""
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    (sock.bind if bind else sock.connect)(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"kv@")
    log.info("kv_events_listening", extra={"fields": {"endpoint": endpoint}})
    try:
        while True:
            frames = await sock.recv_multipart()
            try:
                _apply(scorer, frames)
            except Exception as err:
                # Any engine may publish here; one it cannot parse (another vLLM version, a
                # stray publisher) is logged and skipped, never the end of precise routing.
                topic = frames[0].decode(errors="replace") if frames else ""
                event(log, "kv_events_bad_batch", logging.WARNING, topic=topic, error=repr(err))
    finally:
        sock.close(0)


def _apply(scorer: PrecisePrefixProducer, frames: list[bytes]) -> None:
    """One message: topic `kv@<pod>@<model>`, sequence, msgpack [ts, [events], dp_rank?]."""
    topic, _seq, payload = frames
    parts = topic.decode(errors="replace").split("@")
    pod = parts[1] if len(parts) > 1 else ""
    _ts, events, *_ = msgpack.unpackb(payload)
    for ev in events:
        scorer.apply_event(pod, as_array(ev))


# vLLM 0.32's events are tagged maps ({"type": "BlockStored", "block_hashes": ...}); earlier
# ones, and the sim engine's, tagged arrays. Both become the array form.
_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id"),
    "BlockRemoved": ("block_hashes",),
    "AllBlocksCleared": (),
}


def as_array(event: Any) -> list[Any]:
    if not isinstance(event, dict):
        return list(event)
    kind = event.get("type")
    return [kind, *(event.get(f) for f in _FIELDS.get(str(kind), ()))]
