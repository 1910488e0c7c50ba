"""The two requests of a P/D handoff, built from the client's body (pure functions).

nixlv2 (llm-d's default): the prefill leg asks for one token with kv_transfer_params
do_remote_decode and no streaming; the decode leg is the client's body, untouched, plus the
prefiller's kv_transfer_params verbatim. lmcache: the same legs without kv_transfer_params
(the engines share a cache). nixl, the older protocol, is accepted as a synonym of nixlv2.
"""

from __future__ import annotations

import copy
from typing import Any

from pdserve.wire import prefill_kv_transfer_params

CONNECTORS = ("nixlv2", "nixl", "lmcache")


def prefill_body(body: dict[str, Any], connector: str) -> dict[str, Any]:
    leg = copy.deepcopy(body)
    leg.pop("stream_options", None)
    leg["stream"] = False
    leg["max_tokens"] = 1
    leg["max_completion_tokens"] = 1
    if connector != "lmcache":
        leg["kv_transfer_params"] = prefill_kv_transfer_params()
    return leg


def decode_body(
    body: dict[str, Any], prefill_answer: dict[str, Any], connector: str
) -> dict[str, Any]:
    """The client's body as sent (stream, stream_options, token limits included)."""
    leg = dict(body)
    params = prefill_answer.get("kv_transfer_params")
    if connector != "lmcache" and params is not None:
        leg["kv_transfer_params"] = params
    return leg


def handle_summary(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a person debugging a handoff wants to see of the KV handle."""
    if not params:
        return None
    blocks = params.get("remote_block_ids") or []
    return {
        "engine_id": params.get("remote_engine_id"),
        "remote_request_id": params.get("remote_request_id"),
        "remote": f"{params.get('remote_host')}:{params.get('remote_port')}",
        "blocks": len(blocks),
        "tokens": params.get("remote_num_tokens"),
    }
