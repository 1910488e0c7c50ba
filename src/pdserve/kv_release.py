"""The KV release: the message that tells a prefill engine (the producer) to free the blocks
it leased for one request, and the one call that sends it.

A consumer sends it at the end of every pull, and without pulling when it will not read (the
sim engine, as vLLM's NixlConnector notifies its producer); the decode sidecar sends it in the
decode engine's place when the handle never reaches one (sidecar/kv_release.py). The producer
answers whether it still held the lease. It goes to the side channel the KV handle names
(`remote_host:remote_port`), as one of the side channel's frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pdserve.side_channel_frames import frame, read_frame

OP = "release"
# The KV handle's fields that name the lease: the producer's side channel and its request.
HANDLE = ("remote_host", "remote_port", "remote_request_id")


class ReleaseError(Exception):
    """The producer did not answer the release: one line naming it and why."""


def message(request_id: str) -> dict[str, Any]:
    """The release of `request_id`'s lease, as the producer knows the request."""
    return {"op": OP, "request_id": request_id}


def answer(released: bool) -> dict[str, Any]:
    """The producer's reply: whether it still held the lease (False: claimed, expired or
    never leased)."""
    return {"ok": True, "released": released}


async def release(params: dict[str, Any], timeout: float) -> tuple[bool | None, str | None]:
    """Free the lease a KV handle (kv_transfer_params) names: whether the producer still held
    it, or None and why when the handle is malformed or the producer did not answer."""
    host, port, rid = (params.get(k) for k in HANDLE)
    try:
        return await _send(str(host), int(str(port)), str(rid), timeout), None
    except (ReleaseError, ValueError) as err:
        return None, str(err)


async def _send(host: str, port: int, request_id: str, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(frame(message(request_id)))
                await writer.drain()
                reply, _ = await read_frame(reader.readexactly)
            finally:
                writer.close()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
        raise ReleaseError(f"KV release at {host}:{port} failed: {err!r}") from err
    return bool(reply.get("released"))
