"""Prompt text of a given length in tokens, without a tokenizer.

The client must not load a tokenizer (no transformers on the hot path, and the service's
model may not be on this machine), so lengths are approximated with words that count as one
token each nearly everywhere: short, common, lower-case English words with a leading space.
The sim engine's built-in tokenizer counts every space-led alphabetic run as one token, so
there the count is exact; GPT-2, Llama, Qwen and Mistral vocabularies hold each of these
words as one piece, so a real tokenizer agrees to within a few percent (a chat template adds
its own few tokens around each message). Checked with SmolLM2's tokenizer (GPT-2 style BPE):
each of these words is one token, and 1000 of them are 1000 tokens.
"""

from __future__ import annotations

import random

_COMMON = (
    "the of and to in is it that for on with as was at by be this are from or have an "
    "they which one you had not but what all were when we there can your more if no man "
    "out so said up time them some she way could my than first been who its now people "
    "long down day did get come made may part over new sound take only little work know "
    "place year live me back give most very after thing our just name good great where "
    "help through much before line right too mean old any same tell boy follow came want "
    "show also around form three small set put end does another well large must big even "
    "such because turn here why ask went men read need land different home us move try "
    "kind hand picture again change off play spell air away animal house point page letter "
    "mother answer found study still learn should world high every near add food between "
    "own below country plant last school father keep tree never start city earth eye light "
    "thought head under story saw left few while along might close something seem next hard "
    "open example begin life always those both paper together got group often run"
)
WORDS: tuple[str, ...] = tuple(" " + w for w in _COMMON.split())


def words(rng: random.Random, tokens: int) -> str:
    """`tokens` random words: distinct requests share no accidental prefix beyond a word or
    two, so prefix caching only helps where a workload asks for shared prefixes."""
    if tokens <= 0:
        return ""
    return "".join(rng.choices(WORDS, k=tokens))
