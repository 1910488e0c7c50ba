"""The sim's KV leases are bounded in count and in blocks, and a consumer that will never
pull frees its producer's lease at once (NixlConnector's notify-without-read paths)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from pdserve import wire
from testkit import metric

LEASES = "pdserve_sim:kv_leases"
KV_USAGE = "vllm:kv_cache_usage_perc"
REFUSALS = "pdserve_sim:kv_lease_refusals_total"


def _prefill(url: str, prompt: object) -> httpx.Response:
    body = {
        "prompt": prompt,
        "max_tokens": 1,
        "kv_transfer_params": wire.prefill_kv_transfer_params(),
    }
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def _refused_quickly(url: str, prompt: object) -> str:
    start = time.monotonic()
    resp = _prefill(url, prompt)
    assert time.monotonic() - start < 1.0, "a refusal must not wait"
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
    assert "127.0.0.1" not in error["message"]
    return str(error["message"])


def _wait_leases(url: str, count: int, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while metric(url, LEASES) != count:
        assert time.monotonic() < deadline, f"{url} never came to {count} leases"
        time.sleep(0.05)  # polling the engine's gauge, bounded by the deadline


def test_past_max_kv_leases_a_prefill_is_a_quick_503_until_one_is_claimed(sim_engine) -> None:
    p, d = sim_engine("--zero-cost", "--max-kv-leases", "2"), sim_engine("--zero-cost")
    handles = [_prefill(p.url, f"lease {i} " * 30).json()["kv_transfer_params"] for i in (1, 2)]
    assert metric(p.url, LEASES) == 2
    assert "max 2" in _refused_quickly(p.url, "third " * 30)
    assert metric(p.url, REFUSALS) == 1
    plain = httpx.post(f"{p.url}/v1/completions", json={"prompt": "plain", "max_tokens": 2})
    assert plain.status_code == 200  # only P/D prefills are bounded
    claim = {"prompt": "lease 1 " * 30, "max_tokens": 2, "kv_transfer_params": handles[0]}
    assert httpx.post(f"{d.url}/v1/completions", json=claim).status_code == 200
    assert metric(p.url, LEASES) == 1  # the pull released it
    assert _prefill(p.url, "third " * 30).status_code == 200


def test_a_prefill_that_cannot_fit_beside_leased_blocks_is_a_quick_503(
    sim_engine, tmp_path
) -> None:
    small = tmp_path / "small.yaml"
    small.write_text("num_blocks: 8\nblock_size: 16\n")
    p = sim_engine("--zero-cost", "--profile", str(small))
    assert _prefill(p.url, list(range(1000, 1100))).status_code == 200  # 7 of 8 blocks
    message = _refused_quickly(p.url, list(range(2000, 2070)))
    assert "5 KV blocks" in message and "1 are not held" in message
    # A prompt sharing the leased prefix needs only its own tail: it fits.
    assert _prefill(p.url, list(range(1000, 1100))).status_code == 200
    assert metric(p.url, LEASES) == 2


@pytest.fixture
def busy_consumer(sim_engine):
    """A consumer running one request at a time, busy with a long one for ~2.4 s."""
    d = sim_engine("--max-num-seqs", "1")
    body = {"prompt": "busy", "max_tokens": 300, "ignore_eos": True}
    worker = threading.Thread(
        target=lambda: httpx.post(f"{d.url}/v1/completions", json=body, timeout=30)
    )
    worker.start()
    deadline = time.monotonic() + 10
    while metric(d.url, "vllm:num_requests_running") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)  # polling the engine's gauge, bounded by the deadline
    yield d
    worker.join(30)


@pytest.mark.no_stranded_kv
def test_a_consumer_aborted_before_admission_frees_the_producer_lease(
    sim_engine, busy_consumer
) -> None:
    p = sim_engine("--zero-cost")
    body = {"prompt": "queued " * 40, "max_tokens": 4}
    handle = _prefill(p.url, body["prompt"]).json()["kv_transfer_params"]
    assert metric(p.url, LEASES) == 1
    with pytest.raises(httpx.ReadTimeout):  # waits behind the busy one, then gives up
        httpx.post(
            f"{busy_consumer.url}/v1/completions",
            json={**body, "kv_transfer_params": handle},
            timeout=0.3,
        )
    _wait_leases(p.url, 0)  # not the 480 s lease timeout
    assert metric(p.url, KV_USAGE) == 0
    assert "aborted before admission" in busy_consumer.proc.log_path.read_text()


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("why", ["unknown model", "too long"])
def test_a_consumer_that_rejects_the_request_frees_the_producer_lease(sim_engine, why) -> None:
    p, d = sim_engine("--zero-cost"), sim_engine("--zero-cost")
    prompt = "rejected " * 40
    handle = _prefill(p.url, prompt).json()["kv_transfer_params"]
    body = {"prompt": prompt, "max_tokens": 4, "kv_transfer_params": handle}
    if why == "unknown model":
        body["model"] = "nope"
    else:
        body["max_tokens"] = 10**6
    resp = httpx.post(f"{d.url}/v1/completions", json=body)
    assert resp.status_code == (404 if why == "unknown model" else 400)
    _wait_leases(p.url, 0)
    assert metric(p.url, KV_USAGE) == 0


def test_a_negative_max_kv_leases_is_one_line_and_exit_2() -> None:
    import subprocess

    from testkit import PDSERVE

    done = subprocess.run(
        [*PDSERVE, "sim-engine", "--port", "0", "--max-kv-leases", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--max-kv-leases -1" in done.stderr
    assert "Traceback" not in done.stderr
