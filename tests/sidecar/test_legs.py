"""The nixlv2 request rewriting, as pure functions."""

from pdserve.sidecar.allowlist import PoolAllowList
from pdserve.sidecar.legs import decode_body, prefill_body


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


class FakePods:
    def __init__(self, events):
        self._events = events

    def selector(self):
        return {"app": "x"}

    def events(self, selector):
        assert selector == {"app": "x"}
        yield from self._events


def test_pool_allow_list_follows_pod_events() -> None:
    pod = lambda name, ip: {"metadata": {"name": name}, "status": {"podIP": ip}}  # noqa: E731
    events = [
        ("ADDED", pod("a", "10.0.0.1")),
        ("ADDED", pod("b", "10.0.0.2")),
        ("MODIFIED", pod("a", "10.0.0.3")),
        ("DELETED", pod("b", "")),
    ]
    allow = PoolAllowList(FakePods(events))
    allow.run()
    assert allow.allows("10.0.0.3")
    assert not allow.allows("10.0.0.1") and not allow.allows("10.0.0.2")
