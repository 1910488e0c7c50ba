"""A subscriber that applies the KV event stream ends up with the engine's cache content."""

from __future__ import annotations

import json

import httpx
import msgpack
import zmq

from pdserve.block_hashes import event_key
from pdserve.process import free_port


def test_kv_events_reproduce_cache_content(sim_engine, tmp_path) -> None:
    port = free_port()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.bind(f"tcp://127.0.0.1:{port}")  # the EPP binds; engines connect
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    profile = tmp_path / "small.yaml"
    profile.write_text("num_blocks: 64\nblock_size: 16\n")
    cfg = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://127.0.0.1:{port}",
        "topic": "kv@127.0.0.1@sim",
    }
    engine = sim_engine(
        "--zero-cost", "--profile", str(profile), "--kv-events-config", json.dumps(cfg)
    )
    url = f"{engine.url}/v1/completions"
    index: set[int] = set()
    seen = {"BlockStored": 0, "BlockRemoved": 0, "AllBlocksCleared": 0}
    seqs: list[int] = []

    def drain() -> None:
        while sub.poll(timeout=300):
            topic, seq, payload = sub.recv_multipart()
            assert topic == b"kv@127.0.0.1@sim"
            seqs.append(int.from_bytes(seq, "big"))
            ts, events, _rank = msgpack.unpackb(payload)
            assert isinstance(ts, float)
            for ev in events:  # vLLM 0.32's tagged maps, hashes as their low 64 bits
                seen[ev["type"]] += 1
                if ev["type"] == "BlockStored":
                    assert ev["block_size"] == 16
                    assert len(ev["token_ids"]) == 16 * len(ev["block_hashes"])
                    index.update(ev["block_hashes"])
                elif ev["type"] == "BlockRemoved":
                    index.difference_update(ev["block_hashes"])
                else:
                    index.clear()

    # ZMQ PUB/SUB drops messages sent before the subscription connects: wait for the first.
    for attempt in range(50):
        httpx.post(url, json={"prompt": f"warm up {attempt} " * 20, "max_tokens": 1})
        drain()
        if seen["BlockStored"]:
            break
    for i in range(40):  # 40 prompts x ~6 blocks overflows 64 blocks: evictions happen
        httpx.post(url, json={"prompt": f"document {i} " + "lorem ipsum " * 40, "max_tokens": 2})
    drain()
    truth = {
        event_key(bytes.fromhex(h))
        for h in httpx.get(f"{engine.url}/sim/kv_blocks").json()["block_hashes"]
    }
    assert seen["BlockRemoved"] > 0
    assert index == truth and truth
    httpx.post(f"{engine.url}/reset_prefix_cache")
    drain()
    assert seen["AllBlocksCleared"] == 1 and index == set()
    assert seqs == sorted(seqs)
    ctx.destroy(0)


def test_decode_engine_announces_the_blocks_it_pulled(sim_engine) -> None:
    from test_sim_pd import decode, prefill

    port = free_port()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.bind(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    cfg = {"enable_kv_cache_events": True, "endpoint": f"tcp://127.0.0.1:{port}", "topic": "kv@d"}
    p = sim_engine("--zero-cost")
    d = sim_engine("--zero-cost", "--kv-events-config", json.dumps(cfg))
    stored: set[int] = set()

    def drain() -> None:
        while sub.poll(timeout=300):
            _topic, _seq, payload = sub.recv_multipart()
            for ev in msgpack.unpackb(payload)[1]:
                if ev["type"] == "BlockStored":
                    stored.update(ev["block_hashes"])

    for attempt in range(50):  # PUB/SUB drops what is sent before the subscription lands
        httpx.post(f"{d.url}/v1/completions", json={"prompt": f"hello {attempt}" * 20})
        drain()
        if stored:
            break
    body = {"prompt": "pulled over nixl " * 40, "max_tokens": 2}
    decode(d.url, body, prefill(p.url, body)).raise_for_status()
    drain()
    truth = {
        event_key(bytes.fromhex(h))
        for h in httpx.get(f"{d.url}/sim/kv_blocks").json()["block_hashes"]
    }
    pulled = {
        event_key(bytes.fromhex(h))
        for h in httpx.get(f"{p.url}/sim/kv_blocks").json()["block_hashes"]
    }
    assert pulled and pulled <= stored and pulled <= truth  # same hashes on both engines
    ctx.destroy(0)
