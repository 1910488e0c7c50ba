"""Prefix-cache affinity. Producers compute, once per cycle, how many leading blocks of the
prompt each endpoint holds: approximately (where earlier prompts were sent) or precisely
(what the engines report in KV events). `prefix-cache-scorer` turns that into scores and the
P/D deciders into a choice, as in llm-d-router v0.10.

Without a tokenizer a token is 4 bytes of the prompt (upstream's estimate backend: the UTF-8
bytes, zero-padded to a multiple of 4, read as little-endian uint32 words)."""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import xxhash
from pydantic import BaseModel, Field, model_validator

from pdserve.block_hashes import Scheme
from pdserve.engine_tokens import DEFAULT_TIMEOUT
from pdserve.epp.framework import (
    Parameters,
    Plugin,
    PreRequest,
    Ref,
    Scorer,
    go_duration,
    register,
)
from pdserve.epp.plugins.datalayer import Extractor
from pdserve.epp.types import Cycle, Endpoint, Request, Result, StateKey
from pdserve.logs import event

if TYPE_CHECKING:
    from pdserve.tokenization import Tokenizer

log = logging.getLogger("pdserve.epp")
HITS = StateKey[dict[str, float]]("prefix.hits")  # endpoint name -> matched fraction (trace)
BYTES_PER_TOKEN = 4
MIN_BLOCK_TOKENS = 64  # upstream raises smaller blockSizeTokens to this (llm-d-router #1158)
_LINK = struct.Struct("<QQ")  # a chain link: le64(block hash) || le64(previous)


def estimated_tokens(prompt: str) -> int:
    return -(-len(prompt.encode()) // BYTES_PER_TOKEN)


def prompt_hashes(model: str, prompt: str, block: int, limit: int) -> list[int]:
    """v0.2-v0.4 scheme: chained xxhash64 over full character blocks, seeded with the model."""
    data = prompt.encode()
    prev = xxhash.xxh64_intdigest(model.encode())
    out = []
    for start in range(0, min(len(data) // block, limit) * block, block):
        prev = xxhash.xxh64_intdigest(data[start : start + block], seed=prev)
        out.append(prev)
    return out


def token_block_hashes(model: str, prompt: str, block_tokens: int, limit: int) -> list[int]:
    """v0.10 scheme over estimated tokens: block i is xxh64(le64(xxh64(its token bytes)) ||
    le64(previous)), the first previous being xxh64(model); a partial last block counts."""
    data = prompt.encode()
    data += b"\0" * (-len(data) % BYTES_PER_TOKEN)
    step = block_tokens * BYTES_PER_TOKEN
    # One struct pack per link and no copy per block: this loop is the largest share of a
    # P/D decision on a 32k-character prompt (bench/epp_decision.py --config).
    h, pack, view = xxhash.xxh64_intdigest, _LINK.pack, memoryview(data)
    prev = h(model.encode())
    out: list[int] = []
    for start in range(0, min(len(data), limit * step), step):
        prev = h(pack(h(view[start : start + step]), prev))
        out.append(prev)
    return out


class LRUIndex:
    """Block hash -> endpoints holding it, with an LRU of bounded size per endpoint."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.by_server: dict[str, OrderedDict[int, None]] = {}
        self.holders: dict[int, set[str]] = {}

    def add(self, server: str, hashes: list[int]) -> None:
        """Every decision adds its prompt's blocks for each chosen endpoint and, once an
        endpoint's LRU is full, evicts as many: the eviction is `remove` inlined."""
        lru = self.by_server.get(server)
        if lru is None:
            lru = self.by_server[server] = OrderedDict()
        holders, capacity = self.holders, self.capacity
        full = len(lru) >= capacity  # then stays full: each insert below evicts one
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            held = holders.get(h)
            if held is None:
                holders[h] = {server}
            else:
                held.add(server)
            if full or len(lru) > capacity:
                full = True
                old = lru.popitem(last=False)[0]
                gone = holders.get(old)
                if gone is not None:
                    gone.discard(server)
                    if not gone:
                        del holders[old]

    def remove(self, server: str, h: int, from_lru: bool = True) -> None:
        if from_lru:
            self.by_server.get(server, OrderedDict()).pop(h, None)
        holders = self.holders.get(h)
        if holders is not None:
            holders.discard(server)
            if not holders:
                del self.holders[h]

    def clear(self, server: str) -> None:
        for h in list(self.by_server.pop(server, {})):
            self.remove(server, h, from_lru=False)

    def matched(self, hashes: list[int]) -> dict[str, int]:
        """Per server, the number of leading blocks it holds. A server's count is written
        when it drops out of the run, so the walk costs one set test per block, not one
        write per block per server (256 blocks x 64 servers dominated a decision)."""
        counts: dict[str, int] = {}
        alive: set[str] = set()
        n = 0
        for i, h in enumerate(hashes):
            holders = self.holders.get(h)
            if not holders:
                break
            if i == 0:
                alive = set(holders)
            elif not alive <= holders:
                for s in alive - holders:
                    counts[s] = i
                alive &= holders
                if not alive:
                    break
            n = i + 1
        for s in alive:
            counts[s] = n
        return counts

    def size(self) -> int:
        return len(self.holders)


@dataclass
class Match:
    """One cycle's prefix lookup: leading blocks held per endpoint, out of `total`."""

    matched: dict[str, int]
    total: int
    block_tokens: int
    hashes: list[int]


class PrefixProducer(PreRequest):
    """The kind `prefixMatchInfoProducerName` names."""

    def __init__(self, name: str, params: Parameters | dict[str, Any] | None = None) -> None:
        self.lookups = self.hits = 0
        self.match_key = StateKey[Match](f"prefix.match.{name}")
        super().__init__(name, params)

    def match(self, cycle: Cycle, req: Request) -> Match:
        """Computed once per cycle, shared by every scorer, profile and decider."""
        found = cycle.find(self.match_key)
        if found is None:
            found = cycle.put(self.match_key, self.lookup(req))
        return found

    def lookup(self, req: Request) -> Match:
        raise NotImplementedError

    def size(self) -> int:
        """Entries in the index, for inference_extension_prefix_indexer_size."""
        raise NotImplementedError

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        """Only the approximate index learns from our own choices."""


class ApproxParams(Parameters):
    autoTune: bool = True
    blockSizeTokens: int = Field(16, ge=0)
    blockSize: int = Field(0, ge=0)  # deprecated name of blockSizeTokens
    maxPrefixBlocksToMatch: int = Field(2048, ge=0)
    maxPrefixTokensToMatch: int = Field(131072, ge=0)
    lruCapacityPerServer: int = Field(31250, ge=0)


@register("approx-prefix-cache-producer")
class ApproxPrefixProducer(PrefixProducer):
    """Where earlier prompts were sent: the chosen endpoints record the request's blocks."""

    Params = ApproxParams
    params: ApproxParams

    def setup(self) -> None:
        p = self.params
        size = p.blockSizeTokens
        if p.blockSize and p.blockSizeTokens == 16:
            size = p.blockSize
        self.block_tokens = max(size, MIN_BLOCK_TOKENS)
        if p.maxPrefixTokensToMatch > 0:
            self.limit = p.maxPrefixTokensToMatch // self.block_tokens
        else:
            self.limit = p.maxPrefixBlocksToMatch or 1 << 62
        self.index = LRUIndex(p.lruCapacityPerServer or 31250)

    def hashes(self, req: Request) -> list[int]:
        return token_block_hashes(req.model, req.prompt, self.block_tokens, self.limit)

    def lookup(self, req: Request) -> Match:
        hashes = self.hashes(req)
        matched = self.index.matched(hashes) if hashes else {}
        return Match(matched, len(hashes), self.block_tokens, hashes)

    def size(self) -> int:
        return self.index.size()

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        m = self.match(cycle, req)  # the index changes only below: the walk still holds
        chosen = [p.endpoint.name for p in result.profiles.values() if p.endpoint is not None]
        self.lookups += 1
        # One hit per lookup, however many profiles (decode and prefill) chose a holder, so
        # the hit ratio stays a ratio.
        if any(m.matched.get(name) for name in chosen):
            self.hits += 1
        for name in chosen:
            self.index.add(name, m.hashes)

    def inert(self) -> dict[str, str]:
        if "autoTune" in self.params.model_fields_set and self.params.autoTune:
            return {"autoTune": "engine block size and KV capacity are not scraped here"}
        return {}


class LegacyApproxProducer(ApproxPrefixProducer):
    """The v0.2-v0.4 prefix scorer's own index: character blocks (hashBlockSize)."""

    def __init__(self, name: str, block_chars: int, limit: int, capacity: int) -> None:
        self.block_chars, self.legacy_limit, self.capacity = block_chars, limit, capacity
        super().__init__(name, {"autoTune": False})

    def setup(self) -> None:
        self.block_tokens = max(self.block_chars // BYTES_PER_TOKEN, 1)
        self.index = LRUIndex(self.capacity)

    def hashes(self, req: Request) -> list[int]:
        return prompt_hashes(req.model, req.prompt, self.block_chars, self.legacy_limit)


HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]


class TokenProcessor(BaseModel):
    model_config = Parameters.model_config
    blockSize: int | None = Field(None, ge=1)
    blockSizeTokens: int | None = Field(None, ge=1)
    hashSeed: str | None = None  # the engines' PYTHONHASHSEED
    # pdserve's: the engines' --prefix-caching-hash-algo. llm-d's indexer hashes as vLLM's
    # sha256_cbor, which llm-d's guides start vLLM with; that is the default here too.
    hashAlgo: HashAlgo | None = None


class KVBlockIndex(BaseModel):
    model_config = Parameters.model_config
    enableMetrics: bool = False
    metricsLoggingInterval: int | str | None = None
    inMemoryConfig: dict[str, Any] | None = None


class PrefixStore(BaseModel):
    model_config = Parameters.model_config
    blockSize: int | None = Field(None, ge=1)  # characters of prompt text per block
    cacheSize: int | None = Field(None, ge=0)  # blocks kept


class TokenizersPool(BaseModel):
    model_config = Parameters.model_config
    tokenizersCacheDir: str | None = None
    workersCount: int | None = None
    modelName: str | None = None


class Indexer(BaseModel):
    model_config = Parameters.model_config
    tokenProcessorConfig: TokenProcessor = Field(default_factory=TokenProcessor)
    kvBlockIndexConfig: KVBlockIndex = Field(default_factory=KVBlockIndex)
    prefixStoreConfig: PrefixStore | None = None
    tokenizersPoolConfig: TokenizersPool | None = None


class KVEvents(BaseModel):
    model_config = Parameters.model_config
    zmqEndpoint: str | None = None
    topicFilter: str | None = None
    concurrency: int | None = None
    discoverPods: bool | None = None


class PreciseParams(Parameters):
    tokenProcessorConfig: TokenProcessor = Field(default_factory=TokenProcessor)
    indexerConfig: Indexer = Field(default_factory=Indexer)
    kvEventsConfig: KVEvents = Field(default_factory=KVEvents)
    speculativeIndexing: bool = False
    speculativeTTL: str | None = None


@register("precise-prefix-cache-producer")
class PrecisePrefixProducer(PrefixProducer, Extractor):
    """Blocks the engines say they hold (KV events, fed from outside the core through
    `apply_event`), matched on the request's block hashes computed as the engines compute
    them: vLLM's scheme (block_hashes.Scheme: hashAlgo, hashSeed) over the tokens the model's
    tokenizer gives (the token-producer's folder, or tokenizersPoolConfig's)."""

    Params = PreciseParams
    params: PreciseParams

    def setup(self) -> None:
        from pdserve.block_hashes import DEFAULT_SEED

        p = self.params
        top, nested = p.tokenProcessorConfig, p.indexerConfig.tokenProcessorConfig
        sizes = [top.blockSize, top.blockSizeTokens, nested.blockSize, nested.blockSizeTokens]
        self.block_tokens = next((s for s in sizes if s), 16)  # kv-cache library default
        seed = next((x for x in (top.hashSeed, nested.hashSeed) if x is not None), DEFAULT_SEED)
        algo = top.hashAlgo or nested.hashAlgo or "sha256_cbor"
        self.scheme = Scheme(algo, seed)
        self.metrics_logging_interval()  # a bad duration is a load error, not a dead task
        self.holders: dict[int, set[str]] = {}
        store = p.indexerConfig.prefixStoreConfig
        self.tokens = TokenCache(0)  # pdserve keeps no tokenizations unless configured to
        if store is not None:
            size = STORE_BLOCKS if store.cacheSize is None else store.cacheSize
            self.tokens = TokenCache(size, store.blockSize or STORE_BLOCK_CHARS)
        pool = p.indexerConfig.tokenizersPoolConfig
        self.tokenizer_source = TokenizerSource(
            pool.modelName if pool else None, pool.tokenizersCacheDir if pool else None
        )
        # Set by bind from the config's token-producer: the engine URL whose /tokenize the
        # request path asks (engine_tokens) before scheduling, and its total timeout.
        self.remote_tokenizer_url: str | None = None
        self.remote_tokenizer_timeout = DEFAULT_TIMEOUT

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        """Tokens come from the config's token-producer where there is one, as upstream."""
        producer = next((x for x in plugins.values() if isinstance(x, TokenProducer)), None)
        if producer is not None and not self.tokenizer_source.named:
            self.tokenizer_source = producer.source
        if producer is not None:
            self.remote_tokenizer_url = producer.remote_tokenizer_url
            self.remote_tokenizer_timeout = producer.remote_tokenizer_timeout

    @property
    def zmq_endpoint(self) -> str | None:
        return self.params.kvEventsConfig.zmqEndpoint

    def metrics_logging_interval(self) -> float:
        """Seconds; upstream's field is a Go duration, in JSON nanoseconds or a string."""
        raw = self.params.indexerConfig.kvBlockIndexConfig.metricsLoggingInterval
        if raw is None:
            return 0.0
        if isinstance(raw, int):
            return raw / 1e9
        return go_duration(raw, "indexerConfig.kvBlockIndexConfig.metricsLoggingInterval")

    def request_tokens(self, req: Request) -> list[int]:
        """The engine's tokens when the request path brought them, else the local
        tokenizer's (cached as the prefix store says)."""
        if req.prompt_tokens is not None:
            return req.prompt_tokens
        tok = self.tokenizer_source.tokenizer()
        if req.messages is not None:
            return self.tokens.tokens(tok, tok.chat_prompt(req.messages), chat=True)
        return self.tokens.tokens(tok, req.prompt, chat=False)

    def apply_event(self, pod: str, event: list[Any]) -> None:
        from pdserve.block_hashes import event_key

        kind = event[0]
        if kind == "BlockStored":
            for h in event[1]:
                self.holders.setdefault(event_key(h), set()).add(pod)
        elif kind == "BlockRemoved":
            for h in event[1]:
                self._drop(event_key(h), pod)
        elif kind == "AllBlocksCleared":
            for h in list(self.holders):
                self._drop(h, pod)

    def _drop(self, h: int, pod: str) -> None:
        """A block no pod holds leaves the index, so its size counts held blocks."""
        pods = self.holders.get(h)
        if pods is not None:
            pods.discard(pod)
            if not pods:
                del self.holders[h]

    def lookup(self, req: Request) -> Match:
        from pdserve.block_hashes import event_key

        digests = self.scheme.hashes(self.request_tokens(req), self.block_tokens)
        hashes = [event_key(d) for d in digests]
        return Match(self._walk(hashes), len(hashes), self.block_tokens, hashes)

    def _walk(self, hashes: list[int]) -> dict[str, int]:
        """Events name a pod by address (or address:port); count per holder name."""
        counts: dict[str, int] = {}
        alive: set[str] | None = None
        for i, h in enumerate(hashes):
            holders = self.holders.get(h, set())
            alive = set(holders) if alive is None else alive & holders
            if not alive:
                break
            for pod in alive:
                counts[pod] = i + 1
        return counts

    def matched_blocks(self, m: Match, e: Endpoint) -> int:
        return max(m.matched.get(e.address, 0), m.matched.get(e.name, 0))

    def size(self) -> int:
        """Always the real count: the gauge is the EPP's own, whatever enableMetrics (the
        kv-cache library's metrics upstream) says."""
        return len(self.holders)

    def inert(self) -> dict[str, str]:
        p, out = self.params, {}
        ix = p.indexerConfig
        pool = ix.tokenizersPoolConfig
        if pool is not None and pool.workersCount is not None:
            out["indexerConfig.tokenizersPoolConfig.workersCount"] = (
                "a prompt is tokenized once per scheduling cycle, on the request path"
            )
        if ix.kvBlockIndexConfig.inMemoryConfig is not None:
            out["indexerConfig.kvBlockIndexConfig.inMemoryConfig"] = "the index is unbounded"
        if p.speculativeIndexing or p.speculativeTTL is not None:
            out["speculativeIndexing"] = "not implemented"
        if p.kvEventsConfig.topicFilter or p.kvEventsConfig.concurrency is not None:
            out["kvEventsConfig"] = "only zmqEndpoint is used"
        return out


class PrefixScorerParams(Parameters):
    prefixMatchInfoProducerName: Annotated[str, Ref("PrefixProducer")] = ""
    matchLengthWeight: float = Field(0.0, ge=0.0, le=1.0)
    matchLengthScaleTokens: int = 8192
    # v0.2-v0.4: the scorer held its own index (estimate) or the KV-event one (cache_tracking)
    mode: Literal["estimate", "cache_tracking"] | None = None
    hashBlockSize: int | None = Field(None, ge=1)
    maxPrefixBlocksToMatch: int | None = Field(None, ge=1)
    lruCapacityPerServer: int | None = Field(None, ge=1)
    kvEventsConfig: KVEvents | None = None
    indexerConfig: Indexer | None = None

    @model_validator(mode="after")
    def _scale(self) -> PrefixScorerParams:
        """Only a scale that is used must be positive, as upstream (scorer/prefix/plugin.go)."""
        if self.matchLengthWeight > 0 and self.matchLengthScaleTokens <= 0:
            raise ValueError("matchLengthScaleTokens must be > 0 when matchLengthWeight > 0")
        return self


OWN_PRODUCER = "-producer"  # a legacy scorer's own producer is named <scorer><this>
LEGACY_KEYS = {
    "mode",
    "hashBlockSize",
    "maxPrefixBlocksToMatch",
    "lruCapacityPerServer",
    "kvEventsConfig",
    "indexerConfig",
}


def default_producer(plugins: dict[str, Plugin]) -> PrefixProducer:
    """The producer of the unnamed match-info key: as upstream, an approx-prefix-cache-producer
    (the one configured under its type name, else one with defaults, added to the config)."""
    found = plugins.get(ApproxPrefixProducer.type_name)
    if isinstance(found, PrefixProducer):
        return found
    producer = ApproxPrefixProducer(ApproxPrefixProducer.type_name)
    plugins[producer.name] = producer
    return producer


@register("prefix-cache-scorer")
class PrefixCacheScorer(Scorer, PreRequest):
    """Matched blocks / total blocks, blended with the matched length when matchLengthWeight
    > 0: w x min(1, matched x blockTokens / scaleTokens)^2 + (1 - w) x ratio."""

    Params = PrefixScorerParams
    params: PrefixScorerParams

    def setup(self) -> None:
        p = self.params
        self.producer: PrefixProducer | None = None
        self.owns_producer = bool(p.model_fields_set & LEGACY_KEYS)
        self.forwards = self.owns_producer  # until a config takes the producer over
        if not self.owns_producer:
            return
        name = f"{self.name}{OWN_PRODUCER}"
        if p.mode == "cache_tracking":
            raw = p.model_dump(include={"kvEventsConfig", "indexerConfig"}, exclude_unset=True)
            self.producer = PrecisePrefixProducer(name, raw)
        else:
            self.producer = LegacyApproxProducer(
                name,
                p.hashBlockSize or 64,
                p.maxPrefixBlocksToMatch or 256,
                p.lruCapacityPerServer or 31250,
            )

    def hand_over(self) -> list[Plugin]:
        """A legacy scorer's own producer joins the config: a cache_tracking one must be
        found by the server's KV-event subscription, or it never learns a block."""
        if not self.forwards or self.producer is None:
            return []
        self.forwards = False
        return [self.producer]

    def bind(self, plugins: dict[str, Plugin], profiles: Any) -> None:
        self.bound_producer(plugins)

    def bound_producer(self, plugins: dict[str, Plugin]) -> PrefixProducer:
        """Its producer, found or added within the config. A plugin that reads through this
        scorer (the deprecated P/D handler) calls this whatever the bind order: the `source`
        fallback would make a producer outside the config, which no hook teaches."""
        if self.producer is None:
            named = self.refs.get("prefixMatchInfoProducerName")
            self.producer = (
                named if isinstance(named, PrefixProducer) else default_producer(plugins)
            )
        return self.producer

    @property
    def source(self) -> PrefixProducer:
        if self.producer is None:  # made outside a config (tests): the defaults
            self.producer = ApproxPrefixProducer(ApproxPrefixProducer.type_name)
        return self.producer

    @property
    def index(self) -> LRUIndex:
        """The approximate producer's index, for seeding it; the prefix indexer gauge reads
        `source.size()`, which every producer has."""
        src = self.source
        if not isinstance(src, ApproxPrefixProducer):
            raise AttributeError(f"{self.name} reads a {src.type_name}, which has no LRU index")
        return src.index

    # The EPP's prefix hit-ratio gauge reads these (extproc).

    @property
    def hits(self) -> int:
        return self.source.hits

    @property
    def lookups(self) -> int:
        return self.source.lookups

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        src = self.source
        m = src.match(cycle, req)
        if not m.total:
            return dict.fromkeys((e.name for e in endpoints), 0.0)
        w, scale = self.params.matchLengthWeight, self.params.matchLengthScaleTokens
        scores = {}
        # Most endpoints hold nothing: their score is 0 without the arithmetic (this runs
        # per endpoint per profile on every decision).
        precise, matched = isinstance(src, PrecisePrefixProducer), m.matched
        for e in endpoints:
            n = held(src, m, e) if precise else matched.get(e.name, 0)
            if not n:
                scores[e.name] = 0.0
                continue
            length = min(1.0, n * m.block_tokens / scale) ** 2 if w > 0 else 0.0
            scores[e.name] = w * length + (1 - w) * n / m.total
        cycle.setdefault(HITS, {}).update(scores)
        return scores

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        if self.forwards:
            self.source.pre_request(cycle, req, result)

    def inert(self) -> dict[str, str]:
        if self.forwards and self.producer is not None:
            return self.producer.inert()
        return {}


def held(producer: PrefixProducer, m: Match, e: Endpoint) -> int:
    if isinstance(producer, PrecisePrefixProducer):
        return producer.matched_blocks(m, e)
    return m.matched.get(e.name, 0)


class LegacyPreciseParams(PreciseParams):
    blockSize: int | None = Field(None, ge=1)
    hashSeed: str | None = None
    tokenizer: str = "builtin"


@register("precise-prefix-cache-scorer")
class PrecisePrefixCacheScorer(PrecisePrefixProducer, Scorer):
    """v0.2-v0.8: the producer and the scorer in one plugin (block size and hash seed at the
    top or under indexerConfig.tokenProcessorConfig; a top-level key wins)."""

    Params = LegacyPreciseParams
    params: LegacyPreciseParams

    def setup(self) -> None:
        super().setup()
        if self.params.blockSize:
            self.block_tokens = self.params.blockSize
        if self.params.hashSeed is not None:
            self.scheme = Scheme(self.scheme.algorithm, self.params.hashSeed)
        if self.params.tokenizer != "builtin":
            self.tokenizer_source = TokenizerSource(self.params.tokenizer)

    @property
    def block(self) -> int:
        return self.block_tokens

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        m = self.match(cycle, req)
        total = m.total or 1
        out = {e.name: self.matched_blocks(m, e) / total for e in endpoints}
        cycle.setdefault(HITS, {}).update(out)
        return out

    def inert(self) -> dict[str, str]:
        out = super().inert()
        return out


# The prefix store's defaults upstream (llm-d-kv-cache's LRU token store), and the share of a
# prompt its cached blocks must cover for their tokens to stand for the prompt's.
STORE_BLOCK_CHARS = 256
STORE_BLOCKS = 500_000
MIN_PREFIX_OVERLAP = 0.8


class TokenCache:
    """Tokenizations by blocks of prompt text, least recently used out, as upstream's prefix
    store: a prompt that shares its text prefix with an earlier one takes that one's tokens
    instead of being tokenized again, when the shared blocks cover MIN_PREFIX_OVERLAP of it.

    A block is `block_chars` characters (upstream counts UTF-8 bytes; the same for ASCII),
    keyed by a chain of xxh64 over the previous key and its text, so a key names the whole
    prefix; it holds the tokens that end inside it (a token across a boundary belongs to the
    later block), and a trailing partial block is not kept. The tokens given back cover the
    matched blocks only, as upstream's do. Chat renderings and completions prompts are kept
    apart: the same text tokenizes with special tokens only as a prompt. `capacity` counts
    blocks; 0 keeps nothing."""

    def __init__(self, capacity: int, block_chars: int = STORE_BLOCK_CHARS) -> None:
        self.capacity, self.block_chars = capacity, block_chars
        self._lru: OrderedDict[tuple[bool, int], list[int]] = OrderedDict()

    def tokens(self, tokenizer: Tokenizer, text: str, chat: bool) -> list[int]:
        """`text`'s tokens as vLLM forms them (a prompt with special tokens, a chat
        rendering without), from the cache where it covers enough of `text`."""
        found, covered = self.find(text, chat)
        if found and covered >= MIN_PREFIX_OVERLAP * len(text):
            return found
        if self.capacity > 0:
            try:
                ids, ends = tokenizer.encode_ends(text, special=not chat)
            except NotImplementedError:  # no offsets: nothing to place in blocks
                pass
            else:
                self.add(text, chat, ids, ends)
                return ids
        return tokenizer.encode(text) if chat else tokenizer.encode_prompt(text)

    def find(self, text: str, chat: bool) -> tuple[list[int], int]:
        """The tokens of the longest cached prefix, and how many characters it covers."""
        out: list[int] = []
        covered = 0
        for end, key in self._blocks(text, chat):
            block = self._lru.get(key)
            if block is None:
                break
            self._lru.move_to_end(key)
            out += block
            covered = end
        return out, covered

    def add(self, text: str, chat: bool, ids: list[int], ends: list[int]) -> None:
        """`ends[i]`: the character offset token `ids[i]` ends at."""
        i = 0
        for end, key in self._blocks(text, chat):
            first = i
            while i < len(ids) and ends[i] <= end:
                i += 1
            self._lru[key] = ids[first:i]
            self._lru.move_to_end(key)
            if len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    def _blocks(self, text: str, chat: bool) -> Iterator[tuple[int, tuple[bool, int]]]:
        """(end offset, key) of each whole block of `text`."""
        if self.capacity <= 0:
            return
        prev = 0
        step = self.block_chars
        for start in range(0, len(text) - step + 1, step):
            chunk = text[start : start + step].encode()
            prev = xxhash.xxh64_intdigest(prev.to_bytes(8, "little") + chunk)
            yield start + step, (chat, prev)

    def __len__(self) -> int:
        return len(self._lru)


class TokenizerSource:
    """Where the EPP's tokenizer comes from: a model folder named by `modelName` (itself, or
    under `tokenizersCacheDir`, as upstream's pool caches hub downloads). Nothing is fetched
    from a hub here; without a folder the built-in tokenizer stands in, said once in the log."""

    def __init__(self, model_name: str | None, cache_dir: str | None = None) -> None:
        self.model_name, self.cache_dir = model_name, cache_dir
        self._tokenizer: Tokenizer | None = None

    @property
    def named(self) -> bool:
        return bool(self.model_name)

    def folder(self) -> Path | None:
        if not self.model_name:
            return None
        for candidate in (
            Path(self.cache_dir) / self.model_name if self.cache_dir else None,
            Path(self.model_name),
        ):
            if candidate is not None and (candidate / "tokenizer_config.json").is_file():
                return candidate
        return None

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from pdserve.tokenization import BuiltinTokenizer, HFTokenizer

            folder = self.folder()
            if folder is None and self.model_name and self.model_name != "builtin":
                event(
                    log,
                    "tokenizer_not_found",
                    logging.WARNING,
                    model=self.model_name,
                    cache_dir=self.cache_dir,
                    using="builtin",
                )
            self._tokenizer = HFTokenizer(folder) if folder else BuiltinTokenizer()
        return self._tokenizer


class EngineTokenizer(BaseModel):
    """Where the engine tokenizes (upstream names the URL `url` in v0.10, `http` since)."""

    model_config = Parameters.model_config
    url: str | None = None
    http: str | None = None
    timeout: str | None = None  # a Go duration
    mmTimeout: str | None = None

    @property
    def base_url(self) -> str:
        return (self.http or self.url or DEFAULT_ENGINE_URL).rstrip("/")


DEFAULT_ENGINE_URL = "http://localhost:8000"  # upstream's: the engine beside the EPP


class TokenProducerParams(Parameters):
    modelName: str = ""
    vllm: EngineTokenizer | None = None
    image: dict[str, Any] | None = None
    video: dict[str, Any] | None = None
    udsSocketPath: str | None = None


@register("token-producer", "tokenizer")
class TokenProducer(Plugin):
    """The tokenizer the precise producer counts blocks with: the model's own, from the
    folder `modelName` names; with `vllm`, the engine's (its /tokenize), which the request
    path fetches (engine_tokens.engine_tokens) and puts on Request.prompt_tokens. Without
    them (the call failed, or a caller that does not fetch) the folder's is used."""

    Params = TokenProducerParams
    params: TokenProducerParams

    def setup(self) -> None:
        self.source = TokenizerSource(self.params.modelName or None)
        engine = self.params.vllm
        self.remote_tokenizer_url: str | None = engine.base_url if engine else None
        self.remote_tokenizer_timeout = DEFAULT_TIMEOUT
        if engine is not None and engine.timeout is not None:
            self.remote_tokenizer_timeout = go_duration(engine.timeout, "vllm.timeout")

    def inert(self) -> dict[str, str]:
        why = {
            "vllm.mmTimeout": "text only: no multimodal inputs",
            "image": "text only: no multimodal inputs",
            "video": "text only: no multimodal inputs",
            "udsSocketPath": "no tokenizer sidecar; the model folder's tokenizer is used",
        }
        engine = self.params.vllm
        given = set(self.params.model_fields_set)
        given |= {f"vllm.{k}" for k in engine.model_fields_set} if engine else set()
        return {k: v for k, v in why.items() if k in given}
