"""Freeing a prefill's KV lease that no decode engine will claim.

A prefill run for P/D keeps its blocks until a decode engine pulls them, or until
VLLM_NIXL_ABORT_REQUEST_TIMEOUT (480 s) expires. vLLM's NixlConnector frees them early
only when the decode engine tells the producer it will not read: a NIXL notification naming
`remote_request_id`, which the decode side sends for a request aborted before it was
scheduled, one rejected before admission, or one whose prompt it already caches. When the
handle never reaches a live decode engine (the client left between the legs, the decode
engine is down or refused the leg) nobody sends it, so the sidecar, the last holder of the
handle, sends it in the decode engine's place.

It goes where a pull's own release goes: the producer's side channel named in the handle
(`remote_host:remote_port`), with the message the consumer ends every pull with. No HTTP
endpoint of vLLM's frees a lease (there is none to abort a finished request), and the side
channel is the one address the handle gives for the producer's KV. Against real vLLM the
same message is a NIXL notification after the side channel's metadata handshake; the
sim's side channel takes it as one framed message (pdserve/kv_release.py, which the sim
engine sends too). `--release-unclaimed-kv=false` turns this off for engines that speak
neither.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pdserve import kv_release as contract
from pdserve.logs import event, now_ms

log = logging.getLogger("pdserve.sidecar")

# The release is one small message on loopback or the pod network: a producer that does not
# answer in this long is down, and its leases went with it.
RELEASE_TIMEOUT = 2.0


def handle(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The prefill answer's KV handle, when it names a lease a release could free."""
    params = answer.get("kv_transfer_params")
    if not isinstance(params, dict) or not params.get("do_remote_prefill"):
        return None
    return params if all(params.get(k) for k in contract.HANDLE) else None


async def release(rid: str, params: dict[str, Any], reason: str) -> bool | None:
    """Tell the producer to free the lease; whether it still held it (None: unknown, the
    producer did not answer). One log line either way, under the client's request id."""
    start = time.perf_counter()
    released, error = await contract.release(params, RELEASE_TIMEOUT)
    event(
        log,
        "kv_release",
        logging.INFO if error is None else logging.WARNING,
        request_id=rid,
        remote_request_id=params.get("remote_request_id"),
        remote_engine_id=params.get("remote_engine_id"),
        reason=reason,
        released=released,
        error=error,
        ms=now_ms(start),
    )
    return released
