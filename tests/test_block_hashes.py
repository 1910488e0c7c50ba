"""Our block hashes equal vLLM's own, computed by the vLLM the engines run (the engines venv),
for each algorithm that vLLM build can run and a seed given or not."""

from __future__ import annotations

import json
import subprocess

import pytest

from pdserve.block_hashes import DEFAULT_SEED, Scheme, event_key
from pdserve.engines.venv import engines_python

VLLM_HASHES = """
import json, sys
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as k
algo, tokens, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
fn = get_hash_fn_by_name(algo)
k.init_none_hash(fn)
parent, out = None, []
for i in range(0, len(tokens) // size * size, size):
    parent = k.hash_block_tokens(fn, parent, tokens[i : i + size])
    out.append(parent.hex())
print(json.dumps(out))
"""
TOKENS = [1, 17, 28120, 905, 49151, *range(3000, 3040)]


def vllm_hashes(algo: str, seed: str | None, block_size: int) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"} | ({"PYTHONHASHSEED": seed} if seed is not None else {})
    out = subprocess.run(
        [str(engines_python()), "-c", VLLM_HASHES, algo, json.dumps(TOKENS), str(block_size)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor"])
@pytest.mark.parametrize("seed", [None, "42"])
def test_our_chain_equals_vllms(algo: str, seed: str | None) -> None:
    ours = Scheme(algo, DEFAULT_SEED if seed is None else seed).hashes(TOKENS, 16)
    assert len(ours) == 2
    assert [h.hex() for h in ours] == vllm_hashes(algo, seed, 16)


def test_a_chain_continues_where_it_left_off_and_partial_blocks_are_not_hashed() -> None:
    scheme = Scheme("sha256_cbor")
    whole = scheme.hashes(TOKENS, 8)
    assert len(whole) == len(TOKENS) // 8
    assert scheme.hashes(TOKENS[:16], 8) + scheme.hashes(TOKENS[16:40], 8, whole[1]) == whole
    assert scheme.hashes(TOKENS[:7], 8) == []
    assert Scheme("sha256_cbor", "other").hashes(TOKENS, 8)[0] != whole[0]


def test_both_event_forms_map_to_one_key() -> None:
    digest = Scheme().hashes(TOKENS, 16)[0]
    as_int = int.from_bytes(digest, "big") & ((1 << 64) - 1)  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES
    assert event_key(digest) == event_key(as_int) == as_int


def test_an_unknown_algorithm_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'md5'.*sha256, sha256_cbor, xxhash, xxhash_cbor"):
        Scheme("md5")
