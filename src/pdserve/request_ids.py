"""Request ids the gateway lets through: one a client sent that a header or a log line
cannot carry whole is replaced, and one equal to a request still in flight is made
distinct, so that one id follows exactly one request through the EPP, the sidecar and the
engines' logs (Envoy keeps the client's x-request-id; the EPP is where it is first read
and it can rewrite the header). The decode sidecar checks ids with the same rule, for the
requests that reach it failing open, without the EPP."""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict

# Visible ASCII, bounded: a newline, a space or a control byte splits a log line or a
# header, and a long id bloats every line of a trace.
MAX_LENGTH = 128
_FIT = re.compile(rf"[!-~]{{1,{MAX_LENGTH}}}")
LIVE_MAX = 65536  # ids in the in-flight book; past it the oldest go (a watcher that failed)
SHOWN = 64  # characters of an unfit client id a log line shows


def fit(rid: str) -> bool:
    return _FIT.fullmatch(rid) is not None


def fresh() -> str:
    return str(uuid.uuid4())


def shown(rid: str) -> str:
    """An unfit id as a log line may show it: escaped to ASCII and cut short."""
    escaped = rid[:SHOWN].encode("unicode_escape", "backslashreplace").decode("ascii")
    return escaped + (f"...({len(rid)} chars)" if len(rid) > SHOWN else "")


def loggable(rid: str | None) -> str | None:
    """A client's id for a line logged before the EPP settled one (a refused body)."""
    return rid if rid is None or fit(rid) else shown(rid)


class InFlight:
    """The ids of requests from the EPP's first look at them to the end of their answer
    (which the watching filter reports). Bounded, oldest first out, so a stream whose end
    was never reported cannot grow it without end."""

    def __init__(self, limit: int = LIVE_MAX) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def claim(self, rid: str) -> str:
        """`rid` itself if no request in flight has it, else the first free `rid-N`."""
        out, n = rid, 1
        while out in self._ids:
            n += 1
            out = f"{rid}-{n}"
        self.add(out)
        return out

    def add(self, rid: str) -> None:
        """In flight under `rid` as it is (the watching filter's view of a routed request)."""
        self._ids[rid] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def release(self, rid: str) -> None:
        self._ids.pop(rid, None)

    def __contains__(self, rid: object) -> bool:
        return rid in self._ids

    def __len__(self) -> int:
        return len(self._ids)
