"""With --model DIR the engine counts tokens with the model's tokenizer and chat template."""

from __future__ import annotations

import httpx
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["<unk>", "<eos>", "hello", "world", "cache", "user", "assistant", ":"]


def _model_dir(tmp_path) -> str:
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab.update({f"w{i}": len(vocab) for i in range(50)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.chat_template = (
        "{% for m in messages %}"
        "{% if m['role'] == 'tool' %}{{ raise_exception('no tool messages') }}{% endif %}"
        "{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    fast.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_model_tokenizer_and_chat_template(sim_engine, tmp_path) -> None:
    engine = sim_engine("--zero-cost", "--model", _model_dir(tmp_path), kv=None)
    comp = httpx.post(
        f"{engine.url}/v1/completions", json={"prompt": "hello world cache", "max_tokens": 3}
    ).json()
    assert comp["usage"]["prompt_tokens"] == 3
    chat = httpx.post(
        f"{engine.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 2},
    ).json()
    # "user : hello world assistant :" under the template = 6 tokens
    assert chat["usage"]["prompt_tokens"] == 6
    assert chat["choices"][0]["message"]["content"].strip()


def test_chat_template_errors_are_400_and_content_parts_are_joined(sim_engine, tmp_path) -> None:
    engine = sim_engine("--zero-cost", "--model", _model_dir(tmp_path), kv=None)
    url = f"{engine.url}/v1/chat/completions"
    bad = httpx.post(url, json={"messages": [{"role": "tool", "content": "x"}]})
    assert bad.status_code == 400 and "no tool messages" in bad.json()["error"]["message"]
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]
    ok = httpx.post(url, json={"messages": [{"role": "user", "content": parts}], "max_tokens": 1})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 6
