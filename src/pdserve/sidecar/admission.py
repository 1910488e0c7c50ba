"""What the sidecar refuses before any leg runs: a body past its limit (413) and a request
past `--max-in-flight` (429), both in the engine's error shape.

The in-flight bound is the only queue bound on the default path: without flow control in
the EPP every request it routes is sent on, and the engine queues whatever arrives. A 429
at once, with Retry-After, lets a client or gateway back off instead of queueing for minutes.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from pdserve import wire
from pdserve.logs import event
from pdserve.sidecar.metrics import SidecarMetrics

log = logging.getLogger("pdserve.sidecar")

# The sidecar's own pages: a probe or a scrape must answer while requests are refused.
UNBOUNDED_PATHS = ("/health", "/metrics")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(wire.error_body(message, status), status=status, headers=headers)


def errors_as_json(max_body: int) -> Middleware:
    """aiohttp's own refusals (a body past client_max_size is a 413) in the engine's shape,
    not its plain-text pages, so a client parses one shape whichever hop refused it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            if isinstance(err, web.HTTPRequestEntityTooLarge):
                return _error(413, f"request body over {max_body} bytes")
            return _error(err.status, err.reason)

    return middleware


class Admission:
    """Counts the requests in flight through one listener and refuses those past the bound."""

    def __init__(self, limit: int, metrics: SidecarMetrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self.metrics = metrics

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNBOUNDED_PATHS:
            return await handler(request)
        if self.limit and self.in_flight >= self.limit:
            return self._refuse(request)
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def _refuse(self, request: web.Request) -> web.Response:
        rid = request.headers.get(wire.REQUEST_ID_HEADER) or str(uuid.uuid4())
        self.metrics.requests.labels(request.path, "overloaded").inc()
        event(
            log,
            "request",
            logging.WARNING,
            request_id=rid,
            path=request.path_qs,
            outcome="overloaded",
            status=429,
            in_flight=self.in_flight,
            max_in_flight=self.limit,
        )
        message = f"too many requests in flight ({self.limit}), retry after {wire.RETRY_AFTER}s"
        return _error(429, message, {"Retry-After": wire.RETRY_AFTER})
