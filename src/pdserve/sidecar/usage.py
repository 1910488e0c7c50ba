"""The client's `usage.prompt_tokens_details.cached_tokens` after a P/D handoff.

The decode engine reports the prompt tokens it found cached locally, which after a KV
transfer says nothing about the cache the prompt was actually computed against: the
prefill engine's. Upstream's sidecar (v0.10) therefore writes the prefiller's count into
every usage object of the decode answer (0 when the prefiller reported none: vLLM leaves
the details null then), whole answers and SSE events alike. Anything that is not a JSON
object with a usage object passes through byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

DETAILS = "prompt_tokens_details"


def prefill_cached_tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage")
    details = usage.get(DETAILS) if isinstance(usage, dict) else None
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def set_cached_tokens(obj: Any, cached: int) -> bool:
    """Whether `obj` (a decoded answer or event) was changed."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return False
    details = usage.get(DETAILS)
    if not isinstance(details, dict):
        usage[DETAILS] = {"cached_tokens": cached}
        return True
    if details.get("cached_tokens") == cached:
        return False
    details["cached_tokens"] = cached
    return True


def rewrite_json(body: bytes, cached: int) -> bytes:
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    return json.dumps(obj).encode() if set_cached_tokens(obj, cached) else body


def _rewrite_line(line: bytes, cached: int) -> bytes:
    if not line.startswith(b"data: ") or b'"usage"' not in line:
        return line  # the common case: a token event carries no usage, no parse needed
    end = len(line) - len(line.rstrip(b"\r\n"))
    data = line[6 : len(line) - end]
    return b"data: " + rewrite_json(data, cached) + line[len(line) - end :]


class SseRewriter:
    """Rewrites complete SSE lines as chunks arrive; a line split across two chunks is held
    until its end comes (an engine may cut an event anywhere)."""

    def __init__(self, cached: int) -> None:
        self.cached = cached
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if not cut:
            return b""
        lines = data[:cut].splitlines(keepends=True)
        return b"".join(_rewrite_line(line, self.cached) for line in lines)

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last line without its newline)."""
        rest, self.pending = self.pending, b""
        return _rewrite_line(rest, self.cached) if rest else b""
