"""vLLM's /tokenize on the sim engine, and the EPP's client of it against a real one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest

from pdserve.engine_tokens import EngineTokensError, engine_tokens
from pdserve.process import free_port
from pdserve.tokenization import BuiltinTokenizer, request_tokens

CHAT = [{"role": "user", "content": "Tell me about caches."}]


@dataclass
class Ask:
    model: str
    prompt: str
    messages: list[dict[str, Any]] | None = None


@pytest.fixture
def engine(sim_engine):
    return sim_engine("--zero-cost")


def test_tokenize_counts_a_prompt_and_a_chat_as_the_engine_does(engine) -> None:
    tok = BuiltinTokenizer()  # the sim engine's without --model
    prompt = httpx.post(f"{engine.url}/tokenize", json={"model": "sim", "prompt": "a b c"})
    assert prompt.status_code == 200
    assert prompt.json()["tokens"] == request_tokens(tok, "a b c", None)
    assert prompt.json()["count"] == len(prompt.json()["tokens"])
    chat = httpx.post(f"{engine.url}/tokenize", json={"messages": CHAT})
    assert chat.json()["tokens"] == request_tokens(tok, "", CHAT)
    ids = httpx.post(f"{engine.url}/tokenize", json={"prompt": [5, 6]})
    assert ids.json()["tokens"] == [5, 6]


def test_tokenize_refuses_like_vllm(engine) -> None:
    unknown = httpx.post(f"{engine.url}/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
    bad = httpx.post(f"{engine.url}/tokenize", json={"prompt": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"


def test_engine_tokens_are_the_engines_own(engine) -> None:
    async def ask() -> tuple[list[int], list[int]]:
        async with aiohttp.ClientSession() as session:
            plain = await engine_tokens(session, engine.url, Ask("sim", "The quick fox"))
            chat = await engine_tokens(session, engine.url + "/", Ask("sim", "", CHAT))
        return plain, chat

    plain, chat = asyncio.run(ask())
    tok = BuiltinTokenizer()
    assert plain == request_tokens(tok, "The quick fox", None)
    assert chat == request_tokens(tok, "", CHAT)


def test_engine_tokens_failures_are_one_line(engine) -> None:
    async def ask(url: str, model: str = "sim", timeout: float = 5.0) -> str:
        async with aiohttp.ClientSession() as session:
            try:
                await engine_tokens(session, url, Ask(model, "x"), timeout=timeout)
            except EngineTokensError as err:
                return str(err)
        raise AssertionError("no error")

    unknown = asyncio.run(ask(engine.url, model="nope"))
    assert unknown == f"{engine.url}/tokenize: HTTP 404: The model `nope` does not exist."
    refused = asyncio.run(ask(f"http://127.0.0.1:{free_port()}"))
    assert "ClientConnectorError" in refused and "\n" not in refused


def test_engine_tokens_gives_up_at_its_timeout() -> None:
    async def run() -> str:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                await engine_tokens(session, f"http://127.0.0.1:{port}", Ask("m", "x"), timeout=0.2)
        except EngineTokensError as err:
            return str(err)
        finally:
            server.close()
            await server.wait_closed()
        raise AssertionError("no timeout")

    assert asyncio.run(run()).endswith("/tokenize: no answer within 0.2s")
