"""The deterministic "model" of the sim engine (its tokenizers are `pdserve.tokenization`).

Generated tokens are a pure function of the prompt's token ids and the position, so one
request gives the same text whether one engine serves it or a prefill engine and a decode
engine split it. That makes P/D correctness testable token for token.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from pdserve.tokenization import Tokenizer, token_bytes


class Generator:
    """Picks output tokens from the prompt alone: same prompt, same continuation."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.choices = tokenizer.output_ids()
        self.eos = tokenizer.eos_token_id

    @staticmethod
    def key(prompt_ids: Sequence[int], adapter: int = 0) -> int:
        """What the continuation depends on: the prompt, and the LoRA adapter if any."""
        return xxhash.xxh64_intdigest(token_bytes(prompt_ids), seed=adapter)

    def token(self, key: int, position: int) -> int:
        h = xxhash.xxh64_intdigest(position.to_bytes(4, "little"), key)  # key: the seed
        return self.choices[h % len(self.choices)]

    @staticmethod
    def natural_length(key: int) -> int:
        """Where the 'model' would emit EOS if not told to ignore it."""
        return 16 + key % 240
