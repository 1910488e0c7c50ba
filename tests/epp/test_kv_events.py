"""The EPP's KV-event subscriber: vLLM's msgpack batches over a real ZMQ socket feed the
precise prefix-cache scorer's index."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgpack
import pytest
import zmq
import zmq.asyncio

from pdserve.epp.framework import make
from pdserve.epp.kv_events import subscribe
from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.process import free_port

BAD = [
    [b"kv@10.0.0.7@m", b"\0" * 8, b"not msgpack \xc1"],
    [b"kv@10.0.0.7@m", b"\0" * 8, msgpack.packb([3.0, [["BlockStored"]], 0])],  # short event
    [b"kv@10.0.0.7@m", b"\0" * 8, msgpack.packb([3.0, 7])],  # events not a list
    [b"kv@10.0.0.7@m", msgpack.packb([3.0, []])],  # no sequence frame
]


async def test_subscriber_applies_engine_batches(caplog: pytest.LogCaptureFixture) -> None:
    scorer = make("precise-prefix-cache-scorer", "pp", {})
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    task = asyncio.create_task(subscribe(scorer, endpoint))
    pub = zmq.asyncio.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)  # engines connect to the EPP's bound SUB, as in llm-d
    stored = msgpack.packb([1.0, [["BlockStored", [11, 12], None, [1, 2], 16, None]], 0])
    removed = msgpack.packb([2.0, [["BlockRemoved", [12]]], 0])
    try:
        # ZMQ drops messages sent before the subscription reaches the publisher, so resend
        # until the first batch lands (a bounded probe, not a sleep).
        for seq in range(200):
            await pub.send_multipart([b"kv@10.0.0.7@m", seq.to_bytes(8, "big"), stored])
            if scorer.holders.get(11):
                break
            await asyncio.sleep(0.01)
        assert scorer.holders[11] == {"10.0.0.7"} and scorer.holders[12] == {"10.0.0.7"}
        caplog.set_level(logging.WARNING, "pdserve.epp")
        for frames in BAD:
            await pub.send_multipart(frames)
        await pub.send_multipart([b"kv@10.0.0.7@m", b"\0" * 8, removed])
        for _ in range(200):
            if not scorer.holders.get(12):
                break
            await asyncio.sleep(0.01)
        assert not scorer.holders.get(12) and scorer.holders[11] == {"10.0.0.7"}
        assert not task.done()  # malformed batches were skipped, the subscriber goes on
        bad = [r for r in caplog.records if r.getMessage() == "kv_events_bad_batch"]
        assert len(bad) == len(BAD) and bad[0].fields["topic"] == "kv@10.0.0.7@m"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pub.close(0)


def test_vllm_032_maps_and_the_array_form_apply_alike() -> None:
    """vLLM 0.32 tags events as maps with int hashes; older engines (and llm-d's fixtures)
    send arrays; a digest in bytes keys the same block as its low 64 bits."""
    from pdserve.block_hashes import Scheme, event_key
    from pdserve.epp.kv_events import as_array

    digest = Scheme().hashes(list(range(16)), 16)[0]
    stored = {
        "type": "BlockStored",
        "block_hashes": [event_key(digest)],
        "parent_block_hash": None,
        "token_ids": list(range(16)),
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        "extra_keys": [None],
    }
    assert as_array(stored) == ["BlockStored", [event_key(digest)], None, list(range(16)), 16, None]
    assert as_array({"type": "BlockRemoved", "block_hashes": [5], "medium": "GPU"}) == [
        "BlockRemoved",
        [5],
    ]
    assert as_array({"type": "AllBlocksCleared"}) == ["AllBlocksCleared"]
    a = make("precise-prefix-cache-scorer", "a", {})
    b = make("precise-prefix-cache-scorer", "b", {})
    assert isinstance(a, PrecisePrefixProducer) and isinstance(b, PrecisePrefixProducer)
    a.apply_event("pod", as_array(stored))
    b.apply_event("pod", ["BlockStored", [digest], None, list(range(16)), 16, None])
    assert a.holders == b.holders == {event_key(digest): {"pod"}}
