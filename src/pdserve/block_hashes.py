"""Block hashes: the keys by which an engine's prefix cache, its KV events and the EPP's
precise prefix producer name a block of tokens. The sim engine and the EPP both import
this, so that the EPP's keys equal the engine's: vLLM's own scheme, which both sides can be
told to use with its flag's names (`--prefix-caching-hash-algo`).

vLLM 0.32 hashes a full block as `hash_fn((parent, tuple(token_ids), extra_keys))`, the
first parent being NONE_HASH = `hash_fn(seed)`; the seed is PYTHONHASHSEED when set, else
"vllm-none-hash" (vLLM draws a random one for the xxhash algorithms, which then match
nothing outside the engine unless PYTHONHASHSEED is shared). `hash_fn` serialises with
pickle or canonical CBOR, then takes SHA-256 or XXH3-128. Digests are bytes; KV events carry
them as bytes, or as their low 64 bits (big-endian) with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES,
and `event_key` maps both forms to one int.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
import xxhash

ALGORITHMS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
DEFAULT_ALGORITHM = "sha256"  # vLLM's default
DEFAULT_SEED = "vllm-none-hash"  # vLLM's NONE_HASH seed when PYTHONHASHSEED is unset
_LOW_64 = (1 << 64) - 1


# pickle.dumps itself, bound to the protocol: no Python frame per block.
_pickled: Callable[[Any], bytes] = functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)


def _cbor(obj: Any) -> bytes:
    return bytes(cbor2.dumps(obj, canonical=True))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xxh3_128(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


_FUNCTIONS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], bytes]]] = {
    "sha256": (_pickled, _sha256),
    "sha256_cbor": (_cbor, _sha256),
    "xxhash": (_pickled, _xxh3_128),
    "xxhash_cbor": (_cbor, _xxh3_128),
}


def seed_from_env(algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The NONE_HASH seed a vLLM engine started with this environment uses: without
    PYTHONHASHSEED, the xxhash algorithms get a random one (their keys then match nothing
    outside the engine, by vLLM's design) and the SHA-256 ones vLLM's fixed default."""
    seed = os.environ.get("PYTHONHASHSEED")
    if seed is not None:
        return seed
    return os.urandom(32).hex() if algorithm.startswith("xxhash") else DEFAULT_SEED


@dataclass(frozen=True)
class Scheme:
    """One engine's block hashing: its algorithm and NONE_HASH seed."""

    algorithm: str = DEFAULT_ALGORITHM
    seed: str = DEFAULT_SEED
    _serialise: Callable[[Any], bytes] = field(init=False, repr=False, compare=False)
    _digest: Callable[[bytes], bytes] = field(init=False, repr=False, compare=False)
    none_hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm not in _FUNCTIONS:
            raise ValueError(
                f"unknown block hash algorithm {self.algorithm!r} (one of {', '.join(ALGORITHMS)})"
            )
        serialise, digest = _FUNCTIONS[self.algorithm]
        object.__setattr__(self, "_serialise", serialise)
        object.__setattr__(self, "_digest", digest)
        object.__setattr__(self, "none_hash", digest(serialise(self.seed)))

    def hashes(
        self,
        tokens: Sequence[int],
        block_size: int,
        parent: bytes | None = None,
        extra_keys: tuple[Any, ...] | None = None,
    ) -> list[bytes]:
        """The chained digests of the full blocks of `tokens`, continuing from `parent`."""
        out: list[bytes] = []
        prev = parent or self.none_hash
        serialise, digest = self._serialise, self._digest  # a simulation hashes millions
        for start in range(0, len(tokens) // block_size * block_size, block_size):
            prev = digest(serialise((prev, tuple(tokens[start : start + block_size]), extra_keys)))
            out.append(prev)
        return out


def event_key(block_hash: bytes | int) -> int:
    """A KV event's block hash, bytes or int, as the int both forms agree on."""
    if isinstance(block_hash, int):
        return block_hash & _LOW_64
    return int.from_bytes(block_hash, "big") & _LOW_64
