"""Tokenizers and prompt rendering: the contract by which the sim engine and the EPP turn a
request into the same tokens and the same text (the EPP hashes what the engine caches), so
neither side owns it.

Two tokenizers: the model folder's own (transformers, its chat template), and a built-in
one for running without a model folder.
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import xxhash

_PIECE = re.compile(r"\s*[A-Za-z]+|\s*\d|\s*[^\sA-Za-z\d]|\s+")
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "po", "ar", "el", "in", "os"]


def _builtin_words() -> list[str]:
    words = [a + b for a in _SYLLABLES for b in _SYLLABLES]
    return [" " + w for w in words] + [
        " " + a + b + c for a in _SYLLABLES[:6] for b in _SYLLABLES for c in _SYLLABLES[:6]
    ]


def token_bytes(ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32s: the bytes every hash here is taken over."""
    arr = array("I", ids)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


class Tokenizer(Protocol):
    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...
    def encode_prompt(self, text: str) -> list[int]: ...
    def encode_ends(self, text: str, special: bool) -> tuple[list[int], list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def chat_prompt(self, messages: list[dict[str, Any]]) -> str: ...
    def output_ids(self) -> list[int]: ...


class BuiltinTokenizer:
    """Word-piece hashing tokenizer: no files needed, stable across processes."""

    eos_token_id = 2
    _offset = 1000
    _vocab = 50000

    def __init__(self) -> None:
        self.words = _builtin_words()

    def encode(self, text: str) -> list[int]:
        return [self._id(p) for p in _PIECE.findall(text)]

    def _id(self, piece: str) -> int:
        return self._offset + xxhash.xxh32_intdigest(piece.encode()) % self._vocab

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.words)
        return "".join(
            self.words[(i - self._offset - self._vocab) % n]
            for i in ids
            if i >= self._offset + self._vocab
        )

    def encode_prompt(self, text: str) -> list[int]:
        return self.encode(text)

    def encode_ends(self, text: str, special: bool) -> tuple[list[int], list[int]]:
        """The tokens with the character offset each ends at (no special tokens here)."""
        pieces = list(_PIECE.finditer(text))
        return [self._id(m[0]) for m in pieces], [m.end() for m in pieces]

    def output_ids(self) -> list[int]:
        return [self._offset + self._vocab + k for k in range(len(self.words))]

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        return chatml(messages)


class HFTokenizer:
    """The model's own tokenizer and chat template (transformers, loaded from a folder)."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.eos_token_id = int(self.tok.eos_token_id if self.tok.eos_token_id is not None else 0)
        self._outputs = self._plain_words()

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """A completions prompt as vLLM tokenizes it: with the tokenizer's special tokens
        (a BOS where the model has one); chat text already carries them from its template."""
        return list(self.tok.encode(text, add_special_tokens=True))

    def encode_ends(self, text: str, special: bool) -> tuple[list[int], list[int]]:
        """As encode (special: encode_prompt), with the character offset each token ends at
        (a special token's is 0). NotImplementedError for a tokenizer that has no offsets
        (a slow, Python one)."""
        if not getattr(self.tok, "is_fast", False):
            raise NotImplementedError("a slow tokenizer has no offsets")
        out = self.tok(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(out["input_ids"]), [end for _, end in out["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        if not getattr(self.tok, "chat_template", None):
            return chatml(messages)
        # Text-only model, as vLLM renders it: content parts are joined into one string.
        plain = [{**m, "content": content_text(m.get("content"))} for m in messages]
        try:
            text = self.tok.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # jinja2 errors, including the template's raise_exception
            raise ValueError(f"chat template failed: {err}") from err
        return str(text)

    def output_ids(self) -> list[int]:
        return self._outputs

    def _plain_words(self) -> list[int]:
        """Ids that decode to ' word' on their own, so streamed deltas concatenate exactly;
        for vocabularies without leading-space pieces, any alphabetic token."""
        spaced: list[int] = []
        plain: list[int] = []
        for idx in sorted(self.tok.get_vocab().values()):
            text = str(self.tok.decode([idx]))
            word = text[1:] if text.startswith(" ") else text
            if len(word) > 1 and word.isalpha() and word.islower():
                (spaced if text.startswith(" ") else plain).append(idx)
            if len(spaced) >= 2048:
                break
        return spaced or plain or [self.eos_token_id]


def request_tokens(
    tokenizer: Tokenizer, prompt: str, messages: list[dict[str, Any]] | None
) -> list[int]:
    """The prompt tokens an engine computes KV for: chat messages through the model's chat
    template, else the completions prompt with special tokens, as vLLM forms them."""
    if messages is not None:
        return tokenizer.encode(tokenizer.chat_prompt(messages))
    return tokenizer.encode_prompt(prompt)


def chatml(messages: list[dict[str, Any]]) -> str:
    """ChatML rendering, the same text the EPP hashes for chat requests."""
    parts = [
        f"<|im_start|>{m.get('role', 'user')}\n{content_text(m.get('content'))}<|im_end|>\n"
        for m in messages
    ]
    return "".join(parts) + "<|im_start|>assistant\n"


def content_text(content: Any) -> str:
    """OpenAI message content: a string or a list of {type: text, text} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)
