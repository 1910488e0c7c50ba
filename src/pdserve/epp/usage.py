"""Completion tokens from an OpenAI-style response body, read as Envoy streams it past.

A whole JSON answer carries `usage` at its top level; an SSE stream carries it in one event
near the end, when the client asked for `stream_options.include_usage` (otherwise there is
nothing to count, and nothing is guessed). Memory stays bounded: a JSON body is kept up to
MAX_BODY bytes, an SSE stream only up to its last unfinished line.
"""

from __future__ import annotations

from typing import Any

from pdserve import json_body

MAX_BODY = 4 * 1024 * 1024


class ResponseUsage:
    def __init__(self, content_type: str) -> None:
        self.sse = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        self._buf = bytearray()
        self._too_big = False
        self.completion_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        if not self.sse:
            if len(self._buf) + len(chunk) > MAX_BODY:
                self._too_big = True
                self._buf.clear()
            if not self._too_big:
                self._buf += chunk
            return
        self._buf += chunk
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest if len(rest) <= MAX_BODY else b"")
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._take(_json(line[len(b"data:") :]))

    def finish(self) -> int | None:
        """The completion tokens the answer reported, once the body is complete."""
        if not self.sse and not self._too_big:
            self._take(_json(bytes(self._buf)))
        elif self.sse:
            self.feed(b"\n")
        return self.completion_tokens

    def _take(self, doc: Any) -> None:
        usage = doc.get("usage") if isinstance(doc, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            self.completion_tokens = tokens


def _json(raw: bytes | bytearray) -> Any:
    try:
        return json_body.loads(raw)
    except ValueError:
        return None
