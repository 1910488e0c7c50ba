"""The ZMQ subscriber that feeds vLLM KV events to the precise prefix-cache scorer."""

from __future__ import annotations

import logging

import msgpack
import zmq
import zmq.asyncio

from pdserve.epp.plugins.prefix import PrecisePrefixCacheScorer

log = logging.getLogger("pdserve.epp")


async def subscribe(scorer: PrecisePrefixCacheScorer, endpoint: str) -> None:
    """Bind a SUB socket (engines connect, as in llm-d) and apply every event batch."""
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"kv@")
    log.info("kv_events_listening", extra={"fields": {"endpoint": endpoint}})
    try:
        while True:
            topic, _seq, payload = await sock.recv_multipart()
            parts = topic.decode(errors="replace").split("@")
            pod = parts[1] if len(parts) > 1 else ""
            try:
                _ts, events, *_ = msgpack.unpackb(payload)
            except (ValueError, msgpack.UnpackException):
                continue
            for ev in events:
                scorer.apply_event(pod, ev)
    finally:
        sock.close(0)
