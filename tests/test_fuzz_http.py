"""Property tests (issue 13): the sim engine's and the sidecar's HTTP surfaces, fed bodies a
client should not send (malformed or truncated JSON, invalid UTF-8, wrong types, huge
values, deep nesting), answer a 4xx in the engine error shape and keep serving. One engine
and one sidecar in front of it for the module; derandomized, so CI runs are reproducible."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdserve import wire
from pdserve.process import ManagedProcess, free_port
from testkit import PDSERVE, nested

NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
PATHS = ("/v1/completions", "/v1/chat/completions")
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """{"sim": port, "sidecar": port, "prefill": port}: the sidecar relays to the sim,
    decode-only or, with the prefiller header, after a prefill leg on the second engine."""
    logs = tmp_path_factory.mktemp("fuzz-http")
    started: list[ManagedProcess] = []

    def spawn(name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, logs / f"{name}.log", env=dict(os.environ))
        started.append(proc.start())
        return proc

    try:
        sim = free_port()
        spawn(
            "sim",
            [
                *PDSERVE,
                "sim-engine",
                "--port",
                str(sim),
                "--served-model-name",
                "sim",
                "--kv-transfer-config",
                NIXL,
            ],
        )
        started[-1].wait_http(f"http://127.0.0.1:{sim}/health", timeout=60)
        side = free_port()
        spawn(
            "sidecar",
            [
                *PDSERVE,
                "sidecar",
                "--port",
                str(side),
                "--host",
                "127.0.0.1",
                "--vllm-port",
                str(sim),
                "--secure-proxy=false",
            ],
        )
        started[-1].wait_http(f"http://127.0.0.1:{side}/health", timeout=30)
        prefill = free_port()  # a P/D pair on one engine hangs on chat: a second one
        spawn(
            "prefill",
            [
                *PDSERVE,
                "sim-engine",
                "--port",
                str(prefill),
                "--served-model-name",
                "sim",
                "--kv-transfer-config",
                NIXL,
            ],
        )
        started[-1].wait_http(f"http://127.0.0.1:{prefill}/health", timeout=60)
        yield {"sim": sim, "sidecar": side, "prefill": prefill}
    finally:
        for proc in reversed(started):
            proc.stop(timeout=5)


SURFACES = ("sim", "sidecar", "sidecar-pd")


def _post(servers: dict[str, int], surface: str, path: str, content: bytes) -> httpx.Response:
    port = servers["sim" if surface == "sim" else "sidecar"]
    headers = {"content-type": "application/json"}
    if surface == "sidecar-pd":
        headers[wire.PREFILLER_HEADER] = f"127.0.0.1:{servers['prefill']}"
    return httpx.post(f"http://127.0.0.1:{port}{path}", content=content, headers=headers, timeout=8)


def _is_error_shape(resp: httpx.Response) -> None:
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["code"] == resp.status_code, err


def _still_serving(servers: dict[str, int], surface: str) -> None:
    good = json.dumps({"model": "sim", "prompt": "hi", "max_tokens": 2}).encode()
    resp = _post(servers, surface, "/v1/completions", good)
    assert resp.status_code == 200, resp.text


def _refused(servers: dict[str, int], surface: str, path: str, content: bytes) -> None:
    resp = _post(servers, surface, path, content)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    _is_error_shape(resp)


GOOD = {"model": "sim", "prompt": "hi", "max_tokens": 2}
GOOD_CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
weird = st.one_of(
    json_values,
    st.sampled_from([2**64, -(2**63), 10**400, -1, 0, 1e308, "", "😀" * 50, nested(60)]),
)

# Bodies no server may accept: not JSON, not UTF-8, cut short, not an object, too deep.
not_json = st.binary(max_size=60).filter(lambda b: not _parses_to_object(b))
truncated = st.integers(1, len(json.dumps(GOOD)) - 1).map(lambda n: json.dumps(GOOD)[:n].encode())
bad_utf8 = st.binary(min_size=1, max_size=8).map(
    lambda b: json.dumps(GOOD).encode()[:-2] + b"\xff" + b + b'"}'
)
not_object = json_values.filter(lambda v: not isinstance(v, dict)).map(
    lambda v: json.dumps(v).encode()
)
too_deep = st.sampled_from(
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]
)
malformed = st.one_of(not_json, truncated, bad_utf8, not_object, too_deep)


def _parses_to_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


@st.composite
def mistyped(draw: st.DrawFn) -> tuple[str, bytes]:
    """A good request with one field given a wrong type (or a bad value) that vLLM refuses."""
    chat = draw(st.booleans())
    body: dict[str, Any] = dict(GOOD_CHAT if chat else GOOD)
    field, value = draw(
        st.sampled_from(
            [
                ("max_tokens", st.sampled_from([-1, 2**64, 10**400, "two", [2], {"a": 1}, 1.5])),
                ("temperature", st.sampled_from([-1, "hot", [1], {"a": 1}, 10**400])),
                ("top_p", st.sampled_from([-0.5, 2, "x", [1]])),
                ("n", st.sampled_from([0, -1, "one", [1]])),
                ("stream", st.sampled_from(["maybe", 2, [True], {"a": 1}])),
                ("model", st.sampled_from([1, [], {"a": 1}, True, "no-such-model", nested(60)])),
                (
                    "messages" if chat else "prompt",
                    st.sampled_from([1, {"a": 1}, True, [{}], nested(60)]),
                ),
            ]
        ).flatmap(lambda fv: st.tuples(st.just(fv[0]), fv[1]))
    )
    body[field] = value
    return ("/v1/chat/completions" if chat else "/v1/completions"), json.dumps(body).encode()


@pytest.mark.parametrize("surface", SURFACES)
@FUZZ
@given(path=st.sampled_from(PATHS), content=malformed)
def test_malformed_body_is_a_4xx_error(servers, surface: str, path: str, content: bytes) -> None:
    _refused(servers, surface, path, content)


@pytest.mark.parametrize("surface", SURFACES)
@FUZZ
@given(case=mistyped())
def test_mistyped_field_is_a_4xx_error(servers, surface: str, case: tuple[str, bytes]) -> None:
    path, content = case
    _refused(servers, surface, path, content)


@pytest.mark.parametrize("surface", SURFACES)
@settings(FUZZ, max_examples=30)
@given(extra=st.dictionaries(st.text(max_size=10), weird, max_size=3))
def test_unknown_fields_never_a_5xx(servers, surface: str, extra: dict[str, Any]) -> None:
    """Extra keys next to good ones: vLLM ignores unknown ones, so 200 or a 4xx, never a 5xx."""
    body = {**extra, **GOOD}
    resp = _post(servers, surface, "/v1/completions", json.dumps(body).encode())
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text
    if resp.status_code != 200:
        _is_error_shape(resp)


@pytest.mark.parametrize("surface", ("sim", "sidecar"))
@settings(FUZZ, max_examples=10)
@given(cut=st.integers(0, len(json.dumps(GOOD)) - 1))
def test_body_cut_short_by_the_client(servers, surface: str, cut: int) -> None:
    """Content-Length promises the whole body, the client sends part and stops writing:
    the server answers a 4xx, or closes (there is no whole request to answer)."""
    raw = json.dumps(GOOD).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", servers[surface]), timeout=10) as sock:
        sock.sendall(head + raw[:cut])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]


@pytest.mark.parametrize("surface", SURFACES)
def test_still_serving_after_the_fuzz(servers, surface: str) -> None:
    _still_serving(servers, surface)
    for name in ("sim", "sidecar", "prefill"):
        assert httpx.get(f"http://127.0.0.1:{servers[name]}/health").status_code == 200
