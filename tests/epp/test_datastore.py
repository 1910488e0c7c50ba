"""The datastore's edges: an endpoint source that fails, and /metrics text that is odd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from pdserve import wire
from pdserve.epp.datastore import (
    Datastore,
    FileSource,
    PoolSource,
    StaticSource,
    parse_metrics,
)
from pdserve.epp.types import Endpoint, Metrics
from pdserve.pool_pods import PoolPods
from pdserve.process import free_port
from pdserve.tls import server_context
from testkit import FakePods

ODD_METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting
vllm:num_requests_waiting{model_name="m"} +Inf
vllm:num_requests_waiting{model_name="m"} not-a-number
vllm:num_requests_running{model_name="m",engine="0"} 3 1700000000000
vllm:kv_cache_usage_perc{model_name="m"} NaN
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
vllm:lora_requests_info{max_lora="x",running_lora_adapters="a,b",waiting_lora_adapters=""} 1
"""


def test_odd_metrics_lines_are_skipped_not_fatal() -> None:
    m = Metrics(waiting=4, running=0, kv_usage=0.0, updated=0.0)
    parse_metrics(ODD_METRICS, m, now=5.0)
    assert m.waiting == 4  # no line gave a usable value: the last one stays
    assert m.running == 3  # a sample timestamp is not the value
    assert m.kv_usage == 0.25  # NaN is no reading; the older name fills in
    assert m.loras_running == {"a", "b"} and m.max_loras == 0
    assert m.updated == 5.0


def test_the_newest_lora_series_is_the_current_one() -> None:
    """vLLM keeps one series per adapter set it has seen, valued with the time it was set."""
    text = (
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",waiting_lora_adapters=""}'
        " 1700000009.0\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters="b"}'
        " 1700000001.0\n"
    )
    m = Metrics()
    parse_metrics(text, m, now=1.0)
    assert (m.loras_running, m.loras_waiting, m.max_loras) == ({"a"}, frozenset(), 2)


def pool_pod(name: str, ip: str, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {wire.ROLE_LABEL: "decode"}},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_the_pool_source_reads_the_follower_not_the_api_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ready pods with an IP on the target port; a lost watch is logged and the re-list
    drops a pod deleted meanwhile; a poll with nothing new costs no work."""
    sync = {"items": [pool_pod("a", "10.1.0.5"), pool_pod("b", "10.1.0.6", "False")],
            "ports": [8000]}  # fmt: skip
    pods = PoolPods(
        FakePods(
            [("SYNC", sync), ("ADDED", pool_pod("c", "10.1.0.7")), ("ADDED", pool_pod("d", ""))],
            ApiException(status=503, reason="Service Unavailable"),
            [("SYNC", {"items": [pool_pod("c", "10.1.0.7")], "ports": [8000]})],
        ),
        retry_seconds=0,
    )
    source = PoolSource("ns", "pool", pods)
    pods.apply("SYNC", sync)
    first = source.current()
    assert first is not None and [e.name for e in first] == ["10.1.0.5:8000"]
    assert source.current() is None  # unchanged
    with caplog.at_level(logging.WARNING, logger="pdserve"):
        pods.run()
    assert [r.getMessage() for r in caplog.records] == ["pool_watch_failed"]
    now = source.current()
    assert now is not None and [e.name for e in now] == ["10.1.0.7:8000"]
    assert now[0].labels == {wire.ROLE_LABEL: "decode"}


def test_an_off_schema_endpoints_file_is_logged_once_per_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text('[{"address": 1}]')
    source = FileSource(str(path))
    with caplog.at_level(logging.WARNING, logger="pdserve.epp"):
        assert [source.current() for _ in range(3)] == [None, None, None]
        path.write_text('{"not": "a list"}')
        assert source.current() is None and source.current() is None
    logged = [r for r in caplog.records if r.getMessage() == "endpoints_file_unreadable"]
    assert len(logged) == 2
    assert [set(r.fields) for r in logged] == [{"path", "error"}] * 2
    assert logged[0].fields["path"] == str(path)


async def _serve_metrics(
    status: list[int], tls: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """A /metrics page answering the first of `status` (the test changes it)."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(status=status[0], text="vllm:num_requests_waiting 2\n")

    app = web.Application()
    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_failed_scrape_marks_the_endpoint_not_ready_at_once() -> None:
    """Refused and non-200 both count; the next good scrape brings it back."""
    status = [200]
    runner, port = await _serve_metrics(status)
    refused = Endpoint("127.0.0.1", free_port())
    served = Endpoint("127.0.0.1", port)
    store = Datastore(StaticSource([refused, served]), interval=0.02)
    task = asyncio.create_task(store.run())
    try:
        await _until(lambda: refused.metrics.down and served.metrics.waiting == 2)
        assert served.metrics.ready
        status[0] = 503
        await _until(lambda: served.metrics.down)
        status[0] = 200
        await _until(lambda: served.metrics.ready)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


async def test_https_scrapes_follow_the_scheme_and_verify_flags() -> None:
    """--model-server-metrics-scheme https reaches a TLS engine; verifying (skip-verify
    false) refuses a certificate the trust store lacks, and plain HTTP gets no page."""
    runner, port = await _serve_metrics([200], server_context(""))
    stores = {
        (scheme, verify): Datastore(
            StaticSource([Endpoint("127.0.0.1", port)]), 0.02, scheme=scheme, verify=verify
        )
        for scheme, verify in (("https", False), ("https", True), ("http", True))
    }
    for store in stores.values():
        store.refresh()
    tasks = [asyncio.create_task(store.run()) for store in stores.values()]
    try:
        skipping = stores["https", False].list()[0]
        await _until(lambda: skipping.metrics.waiting == 2)
        for key in (("https", True), ("http", True)):
            ep = stores[key].list()[0]
            await _until(lambda ep=ep: ep.metrics.down)
            assert ep.metrics.waiting != 2, key
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
