"""Prompt tokens at the simulator's pace: the model's tokenizer, word by word, memoised.

The engines of `up --engine sim` tokenize with the model folder's tokenizer (SmolLM2's, for
the examples); a full encode there costs ~2 ms for a 250-word prompt, which alone would spend
the 100k-request budget. A byte-level BPE (GPT-2 style: every pre-token is encoded on its
own) gives the same ids word by word, and a workload reuses a few hundred words, so each
distinct pre-token is encoded once. The tokenizer's own encode is used whenever this shape
cannot be confirmed: another pre-tokenizer, a normalizer, or a sample that disagrees.

Even the pre-tokenizing regex costs ~90 us for a 250-word prompt, a tenth of a simulated
request: text made only of known plain words (lines of ASCII letters, one space or newline
between words) is split with str.split instead, where the regex provably cuts the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import regex

from pdserve.tokenization import HFTokenizer, Tokenizer

# The pattern of the ByteLevel pre-tokenizer (use_regex: true), GPT-2's.
_GPT2 = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
SHORT_PART, MAX_PARTS = 256, 4096  # characters; entries
_CHECK = "<|im_start|>user\n the of and, to 12 in?\n<|im_end|>\n it's  them  \n"


class PieceEncoder:
    """`encode(text)` equal to `tokenizer.encode(text)`, from memoised pre-tokens."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer = tokenizer
        self.added: dict[str, int] = dict(tokenizer.tok.get_added_vocab())
        names = sorted(self.added, key=len, reverse=True)
        self.split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.single: dict[str, int] = {}
        self.many: dict[str, list[int]] = {}
        # Single-token pre-tokens of ASCII letters alone, by their letters: a word at the
        # start of a line ("the"), and one after a space (" the" under "the").
        self.bare: dict[str, int] = {}
        self.spaced: dict[str, int] = {}
        self.newline: list[int] | None = None
        # Short text between special tokens that the regex had to cut, whole: a chat
        # template's fixed text ("assistant\n", a default system prompt) recurs each request.
        self.parts: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        parts = self.split.split(text) if self.split else [text]
        out: list[int] = []
        for part in parts:
            special = self.added.get(part)
            if special is not None:
                out.append(special)
            elif part:
                known = self.parts.get(part)
                if known is not None:
                    out += known
                    continue
                words = self._words(part)
                if words is None:
                    words = self._pieces(part)
                    if len(part) <= SHORT_PART and len(self.parts) < MAX_PARTS:
                        self.parts[part] = words
                out += words
        return out

    def _words(self, part: str) -> list[int] | None:
        """The ids of `part` if it is lines of known plain words, else None. Every word
        found in `bare` or `spaced` is a nonempty run of ASCII letters, and on such a line
        the regex's branch for an optional space and letters takes " word" whole, so it
        cuts at the spaces; a newline between two letters is a pre-token of its own (the
        whitespace branch not followed by a non-space fails before a letter, the plain one
        takes it). A double or edge space, or any other character, misses the dicts."""
        bare, spaced, out = self.bare, self.spaced, []
        try:
            for i, line in enumerate(part.split("\n")):
                if i:
                    out += self.newline or self._newline()
                first, *rest = line.split(" ")
                out.append(bare[first])
                out += map(spaced.__getitem__, rest)
        except KeyError:
            return None
        return out

    def _newline(self) -> list[int]:
        self.newline = self._piece("\n")
        return self.newline

    def _pieces(self, part: str) -> list[int]:
        pieces = _GPT2.findall(part)
        try:  # the common case: every word seen before, and one token
            return [self.single[p] for p in pieces]
        except KeyError:
            out: list[int] = []
            for piece in pieces:
                out += self._piece(piece)
            return out

    def _piece(self, piece: str) -> list[int]:
        tid = self.single.get(piece)
        if tid is not None:
            return [tid]
        ids = self.many.get(piece)
        if ids is None:
            ids = self.tokenizer.encode(piece)
            if len(ids) == 1:
                self.single[piece] = ids[0]
                self._plain(piece, ids[0])
            else:
                self.many[piece] = ids
        return ids

    def _plain(self, piece: str, tid: int) -> None:
        """Note a single-token pre-token for `_words` if it is letters, space-led or not."""
        led = piece[:1] == " "
        letters = piece[1:] if led else piece
        if letters.isascii() and letters.isalpha():
            (self.spaced if led else self.bare)[letters] = tid


class FastTokenizer:
    """The Tokenizer protocol over a PieceEncoder; the rest is the model's tokenizer."""

    def __init__(self, tokenizer: HFTokenizer, pieces: PieceEncoder) -> None:
        self.inner, self.pieces = tokenizer, pieces
        self.eos_token_id = tokenizer.eos_token_id
        self.frame = _user_frame(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.pieces.encode(text)

    def encode_prompt(self, text: str) -> list[int]:
        return self.inner.encode_prompt(text)  # completions add special tokens: rare here

    def encode_ends(self, text: str, special: bool) -> tuple[list[int], list[int]]:
        return self.inner.encode_ends(text, special)  # the prefix store's: the model's own

    def decode(self, ids: Any) -> str:
        return self.inner.decode(ids)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """A lone user message of plain text goes into the template's frame for one user
        message (~80 us a request through jinja otherwise); anything else is rendered."""
        if self.frame is not None and len(messages) == 1:
            m = messages[0]
            content = m.get("content")
            if (
                len(m) == 2
                and m.get("role") == "user"
                and isinstance(content, str)
                and _plain(content)
            ):
                return self.frame[0] + content + self.frame[1]
        return self.inner.chat_prompt(messages)

    def output_ids(self) -> list[int]:
        return self.inner.output_ids()


def fast(tokenizer: Tokenizer, folder: Path | None) -> Tokenizer:
    """`tokenizer` with memoised word-by-word encoding where that is provably the same."""
    if not isinstance(tokenizer, HFTokenizer) or folder is None or not _byte_level(folder):
        return tokenizer
    pieces = PieceEncoder(tokenizer)
    if pieces.encode(_CHECK) != tokenizer.encode(_CHECK):
        return tokenizer
    return FastTokenizer(tokenizer, pieces)


_SENTINEL = "\x00pdserve-content\x00"
_PROBES = ("hello", " the of and, to 12 in? ", "a\n\nb  c\n", "it's  them", "  ", "x")
# Only content of words, digits, spaces and common punctuation takes the frame: a template
# may branch on markup in the content (think or tool tags), which the probes cannot show.
_PLAIN = re.compile(r"[\w\s.,;:!?'\"()\-]*").fullmatch
# The ASCII characters _PLAIN takes, for str.translate: ~10x faster than the regex.
_ASCII_PLAIN = str.maketrans("", "", "".join(c for c in map(chr, range(128)) if _PLAIN(c)))


def _plain(content: str) -> bool:
    if content.isascii():
        return not content.translate(_ASCII_PLAIN)
    return _PLAIN(content) is not None


def _user_frame(tokenizer: HFTokenizer) -> tuple[str, str] | None:
    """The text before and after a lone user message's content, if the chat template
    renders that message as the content verbatim between two fixed strings (as SmolLM2's
    does), confirmed on probes; else None."""
    try:
        text = tokenizer.chat_prompt([{"role": "user", "content": _SENTINEL}])
    except ValueError:
        return None
    if text.count(_SENTINEL) != 1:
        return None
    head, tail = text.split(_SENTINEL)
    for probe in _PROBES:
        if tokenizer.chat_prompt([{"role": "user", "content": probe}]) != head + probe + tail:
            return None
    return head, tail


def _byte_level(folder: Path) -> bool:
    try:
        spec = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
    )
