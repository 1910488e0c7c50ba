"""The precise producer's prefix store (prefixStoreConfig): tokenizations kept by blocks of
prompt text, so a prompt that shares a text prefix with an earlier one reuses its tokens."""

from __future__ import annotations

from pdserve.epp.config import load
from pdserve.epp.plugins.prefix import (
    STORE_BLOCK_CHARS,
    STORE_BLOCKS,
    PrecisePrefixProducer,
    TokenCache,
)
from pdserve.epp.types import Request
from pdserve.tokenization import BuiltinTokenizer

BASE = "the quick brown fox jumps over the lazy dog and keeps running far away"  # 71 chars


class Counting(BuiltinTokenizer):
    """The built-in tokenizer, counting how often a prompt is tokenized."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode_ends(self, text: str, special: bool) -> tuple[list[int], list[int]]:
        self.calls += 1
        return super().encode_ends(text, special)


def test_a_prompt_sharing_most_of_its_text_reuses_the_earlier_tokens() -> None:
    tok, cache = Counting(), TokenCache(100, block_chars=16)
    first = cache.tokens(tok, BASE, chat=False)
    assert first == tok.encode_prompt(BASE) and tok.calls == 1
    assert len(cache) == len(BASE) // 16  # 4 whole blocks; the trailing 7 chars are not kept
    longer = BASE + " now"  # 75 chars, 64 of them in cached blocks: 85% >= 80%
    reused = cache.tokens(tok, longer, chat=False)
    assert tok.calls == 1
    ids, ends = tok.encode_ends(BASE, special=False)
    assert reused == [t for t, end in zip(ids, ends, strict=True) if end <= 64]
    assert reused == first[: len(reused)] and len(reused) < len(first)


def test_too_little_shared_text_or_another_start_tokenizes_afresh() -> None:
    tok, cache = Counting(), TokenCache(100, block_chars=16)
    cache.tokens(tok, BASE, chat=False)
    cache.tokens(tok, BASE[:40] + "x" * 40, chat=False)  # 32 of 80 chars shared
    assert tok.calls == 2
    cache.tokens(tok, "A" + BASE, chat=False)  # the first block differs: nothing shared
    assert tok.calls == 3
    cache.tokens(tok, BASE, chat=True)  # a chat rendering is kept apart from a prompt
    assert tok.calls == 4


def test_the_store_keeps_at_most_cache_size_blocks_and_zero_keeps_none() -> None:
    tok = Counting()
    small = TokenCache(2, block_chars=16)
    small.tokens(tok, BASE, chat=False)
    assert len(small) == 2
    small.tokens(tok, BASE, chat=False)  # its first blocks were evicted: tokenized again
    assert tok.calls == 2
    none = TokenCache(0, block_chars=16)
    assert none.tokens(tok, BASE, chat=False) == tok.encode_prompt(BASE)
    assert len(none) == 0 and tok.calls == 2


def test_the_producer_builds_its_store_from_prefix_store_config() -> None:
    def producer(store: str) -> PrecisePrefixProducer:
        text = (
            f"plugins: [{{type: precise-prefix-cache-producer, parameters: {store}}}]\n"
            "schedulingProfiles: [{name: a}]"
        )
        found = load(text).plugins["precise-prefix-cache-producer"]
        assert isinstance(found, PrecisePrefixProducer)
        return found

    given = producer("{indexerConfig: {prefixStoreConfig: {blockSize: 16, cacheSize: 9}}}")
    assert (given.tokens.block_chars, given.tokens.capacity) == (16, 9)
    defaults = producer("{indexerConfig: {prefixStoreConfig: {}}}")
    assert (defaults.tokens.block_chars, defaults.tokens.capacity) == (
        STORE_BLOCK_CHARS,
        STORE_BLOCKS,
    )
    assert producer("{}").tokens.capacity == 0
    p = producer("{indexerConfig: {prefixStoreConfig: {blockSize: 16}}}")
    first = p.request_tokens(Request("r1", "m", BASE))
    reused = p.request_tokens(Request("r2", "m", BASE + " now"))
    assert len(p.tokens) == 4 and 0 < len(reused) < len(first)
    assert reused == first[: len(reused)]


def test_a_model_tokenizer_gives_the_offsets_its_tokens_end_at(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pdserve.tokenization import HFTokenizer

    words = ["<unk>", "<eos>", "hello", "world", "cache"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(tmp_path / "model")
    hf = HFTokenizer(tmp_path / "model")
    text = "hello world cache hello"
    ids, ends = hf.encode_ends(text, special=True)
    assert ids == hf.encode_prompt(text) and ends == [5, 11, 17, 23]
    cache = TokenCache(10, block_chars=6)
    assert cache.tokens(hf, text, chat=False) == ids
    assert cache.find(text, chat=False) == (ids[:3], 18)  # 3 blocks; "cache" ends at 17
