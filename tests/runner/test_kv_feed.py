"""How `up` wires KV events for a precise-prefix EPP config: engine flags, loopback, refusals."""

from __future__ import annotations

import json

import pytest
import yaml

from pdserve.errors import UserError
from pdserve.runner import components

PRECISE = """\
plugins:
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig: {blockSize: 64, hashSeed: "7", hashAlgo: sha256}
    kvEventsConfig: {zmqEndpoint: "tcp://*:5557"}
- type: token-producer
  parameters: {modelName: org/model}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer}]
"""


def test_the_engines_hash_and_block_as_the_producer_counts() -> None:
    feed = components.kv_feed(PRECISE, 4242, "sim")
    assert feed == components.KVFeed(4242, "sha256", "7", 64)
    args = feed.engine_args("127.0.0.1:9000", "m", ())
    config = json.loads(args[args.index("--kv-events-config") + 1])
    assert config["endpoint"] == "tcp://127.0.0.1:4242"
    assert config["topic"] == "kv@127.0.0.1:9000@m"  # the name the EPP's endpoint list uses
    assert args[args.index("--prefix-caching-hash-algo") + 1] == "sha256"
    assert args[args.index("--block-size") + 1] == "64"
    assert feed.engine_env() == {"PYTHONHASHSEED": "7"}
    assert "--block-size" not in feed.engine_args("a", "m", ("--block-size=64",))


def test_no_precise_producer_no_feed() -> None:
    approx = PRECISE.replace("precise-prefix-cache-producer", "approx-prefix-cache-producer")
    approx = approx.replace('    kvEventsConfig: {zmqEndpoint: "tcp://*:5557"}\n', "")
    approx = approx.replace(
        'tokenProcessorConfig: {blockSize: 64, hashSeed: "7", hashAlgo: sha256}',
        "blockSizeTokens: 64",
    )
    assert components.kv_feed(approx, 1, "vllm") is None


def test_vllm_engines_are_refused_in_one_line() -> None:
    assert components.kv_feed(PRECISE, 1, "sim") is not None
    with pytest.raises(UserError, match=r"runs with --engine sim under pdserve up"):
        components.kv_feed(PRECISE, 1, "vllm")


def test_the_epp_config_listens_on_loopback_and_tokenizes_with_the_model_folder(tmp_path) -> None:
    doc = yaml.safe_load(components.localize_epp_config(PRECISE, 4242, tmp_path))
    producer, tokens = doc["plugins"][0]["parameters"], doc["plugins"][1]["parameters"]
    assert producer["kvEventsConfig"]["zmqEndpoint"] == "tcp://127.0.0.1:4242"
    assert producer["indexerConfig"]["tokenizersPoolConfig"]["modelName"] == str(tmp_path)
    assert tokens["modelName"] == str(tmp_path)
