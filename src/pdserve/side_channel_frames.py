"""The side channel's frames: a 4-byte big-endian length, then a JSON header; a header with
`nbytes` is followed by one length-prefixed raw frame of that many bytes.

The sim engines speak them to each other for pulls (engines/sim/side_channel.py), and the
decode sidecar speaks them to a prefill engine to free a lease (kv_release.py): one framing,
so the two cannot drift apart.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

_LEN = struct.Struct(">I")
ReadExactly = Callable[[int], Awaitable[bytes]]


def frame(header: dict[str, Any], nbytes: int = 0) -> bytes:
    """A header frame, and when `nbytes` of payload follow it, the payload frame's prefix."""
    if nbytes:
        header = {**header, "nbytes": nbytes}
    raw = json.dumps(header).encode()
    return _LEN.pack(len(raw)) + raw + (_LEN.pack(nbytes) if nbytes else b"")


async def read_frame(read: ReadExactly) -> tuple[dict[str, Any], int]:
    """A header, and the size of the payload frame that follows it (left to the caller)."""
    (n,) = _LEN.unpack(await read(4))
    header = json.loads(await read(n))
    nbytes = 0
    if header.get("nbytes"):
        (nbytes,) = _LEN.unpack(await read(4))
    return header, nbytes
