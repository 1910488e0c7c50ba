"""The nixlv2 request rewriting and the SSRF allow-list, as pure functions."""

from typing import Any

from pdserve import kube
from pdserve.sidecar.allowlist import PoolAllowList
from pdserve.sidecar.legs import decode_body, prefill_body
from testkit import FakePods


def test_prefill_leg_asks_for_one_token_without_streaming() -> None:
    body = {
        "model": "m",
        "prompt": "p",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
    }
    leg = prefill_body(body, "nixlv2")
    assert leg["stream"] is False and "stream_options" not in leg
    assert leg["max_tokens"] == 1 and leg["max_completion_tokens"] == 1
    assert leg["kv_transfer_params"] == {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    assert body["stream"] is True and body["max_tokens"] == 50  # the client's body is untouched


def test_decode_leg_restores_the_client_body_and_passes_params_verbatim() -> None:
    body = {"model": "m", "messages": [], "stream": True, "max_completion_tokens": 9}
    params = {"do_remote_prefill": True, "remote_block_ids": [1, 2], "x-extra": {"a": 1}}
    leg = decode_body(body, {"kv_transfer_params": params}, "nixlv2")
    assert leg == {**body, "kv_transfer_params": params}
    assert "max_tokens" not in leg  # absent stays absent


def test_lmcache_legs_carry_no_kv_params() -> None:
    body = {"prompt": "p"}
    assert "kv_transfer_params" not in prefill_body(body, "lmcache")
    assert decode_body(body, {"kv_transfer_params": {"x": 1}}, "lmcache") == body


def pod(name: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"podIP": ip}}


def test_pool_allow_list_follows_pod_events() -> None:
    events = [
        ("SYNC", {"items": [pod("a", "10.0.0.1"), pod("pending", "")], "ports": [8000]}),
        ("ADDED", pod("b", "10.0.0.2")),
        ("MODIFIED", pod("a", "10.0.0.3")),
        ("DELETED", pod("b", "")),
    ]
    allow = PoolAllowList(FakePods(events))
    allow.run()
    assert allow.allows("10.0.0.3:8000")
    assert not allow.allows("10.0.0.1:8000") and not allow.allows("10.0.0.2:8000")
    assert allow.ips == {"a": "10.0.0.3"}


def test_pool_allow_list_allows_the_pools_target_port_only() -> None:
    """Upstream allows any port of a pool pod (llm-d-router issue 979): any listener there."""
    sync = {"items": [pod("a", "10.0.0.1"), pod("b", "fd00::1")], "ports": [8000]}
    allow = PoolAllowList(FakePods([("SYNC", sync)]))
    allow.run()
    assert allow.allows("10.0.0.1:8000") and allow.allows("[fd00::1]:8000")
    for target in ("10.0.0.1:8001", "10.0.0.1", "[fd00::1]:22", "a:8000", "10.0.0.1:8000/x"):
        assert not allow.allows(target), target


def test_a_failed_watch_is_retried_and_the_resync_drops_pods_deleted_meanwhile() -> None:
    first = [("SYNC", {"items": [pod("a", "10.0.0.1"), pod("b", "10.0.0.2")], "ports": [80]})]
    again = [("SYNC", {"items": [pod("a", "10.0.0.1")], "ports": [80]})]  # b went away meanwhile
    allow = PoolAllowList(FakePods(first, ConnectionError("api server gone"), again), 0)
    allow.run()
    assert allow.allows("10.0.0.1:80") and not allow.allows("10.0.0.2:80")


def test_pool_spec_reads_both_inference_pool_versions() -> None:
    old = {"spec": {"selector": {"app": "x"}, "targetPortNumber": 8000}}
    ga = {"spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8200}]}}
    assert kube.pool_spec(old) == kube.PoolSpec({"app": "x"}, 8000)
    assert kube.pool_spec(ga) == kube.PoolSpec({"app": "x"}, 8200)


def test_pods_come_back_in_the_api_servers_json_shape() -> None:
    """The allow-list reads status.podIP: the client's snake_case models must not reach it."""
    from kubernetes import client

    model = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"), status=client.V1PodStatus(pod_ip="10.1.2.3")
    )
    as_json = client.ApiClient().sanitize_for_serialization(model)
    allow = PoolAllowList(FakePods([("SYNC", {"items": [], "ports": [8000]}), ("ADDED", as_json)]))
    allow.run()
    assert allow.allows("10.1.2.3:8000")
