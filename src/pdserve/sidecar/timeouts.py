"""The timeouts of one leg: connect, first byte (request sent to response headers), silence
(between two reads once the headers are in) and, for the prefill leg, a total.

First byte and silence are separate because an unstreamed vLLM answer sends nothing until
the whole generation is done (a long first byte is no fault), while a stream that goes quiet
between two tokens for long is a hung engine. aiohttp's sock_read would measure both with
one clock, so it is off until the headers arrive and armed on the connection then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class LegTimeouts:
    connect: float
    first_byte: float
    silence: float
    total: float | None = None

    def client_timeout(self) -> aiohttp.ClientTimeout:
        """The per-request aiohttp timeout: sock_read stays off until `arm` runs."""
        return aiohttp.ClientTimeout(total=self.total, sock_connect=self.connect, sock_read=None)


class Attempt:
    """One request on a leg: which of its timeouts fired, for the 504's message and the log."""

    def __init__(self, timeouts: LegTimeouts) -> None:
        self.timeouts = timeouts
        self.headers_in = False
        self._head: asyncio.Timeout | None = None

    async def open(self, request: Awaitable[aiohttp.ClientResponse]) -> aiohttp.ClientResponse:
        """The response once its headers are in, bounded by the first-byte timeout; from
        then on the connection times out after `silence` seconds without data."""
        self._head = asyncio.timeout(self.timeouts.first_byte)
        async with self._head:
            resp = await request
        self.headers_in = True
        # A body already whole (its connection released, or about to be) gets no timer: one
        # armed after its end would fire on the idle pooled connection and fail the next
        # request sent on it.
        connection = resp.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is not None and not resp.content.at_eof():  # (a protocol can be falsy)
            protocol.read_timeout = self.timeouts.silence
            protocol.start_timeout()
        return resp

    def which(self, err: BaseException) -> str:
        """The timeout that fired, as "first byte 300s"."""
        t = self.timeouts
        if self._head is not None and self._head.expired():
            return f"first byte {t.first_byte:g}s"
        if isinstance(err, aiohttp.ServerTimeoutError):  # aiohttp's socket timeouts
            return f"silence {t.silence:g}s" if self.headers_in else f"connect {t.connect:g}s"
        return f"total {t.total:g}s" if t.total is not None else "timeout"
