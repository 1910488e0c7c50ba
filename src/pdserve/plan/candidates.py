"""The layouts `plan` compares for N accelerators: aggregated (k replicas x TP t) and P/D
(p prefill x TP tp, d decode x TP td), each using at most N. TP sizes are powers of two, as
attention heads split evenly only so."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from math import gcd


@dataclass(frozen=True, order=True)
class Candidate:
    """prefill 0: aggregated, every replica serves both phases."""

    prefill: int
    prefill_tp: int
    decode: int
    decode_tp: int

    @property
    def aggregated(self) -> bool:
        return self.prefill == 0

    @property
    def accelerators(self) -> int:
        return self.prefill * self.prefill_tp + self.decode * self.decode_tp

    @property
    def ratio(self) -> str:
        """Prefill:decode accelerators, in lowest terms (aggregated: "agg")."""
        if self.aggregated:
            return "agg"
        p, d = self.prefill * self.prefill_tp, self.decode * self.decode_tp
        g = gcd(p, d)
        return f"{p // g}:{d // g}"

    @property
    def label(self) -> str:
        decode = f"{self.decode}x TP{self.decode_tp}"
        if self.aggregated:
            return f"aggregated {decode}"
        return f"P {self.prefill}x TP{self.prefill_tp} + D {decode}"


def tp_sizes(limit: int) -> list[int]:
    sizes, t = [], 1
    while t <= limit:
        sizes.append(t)
        t *= 2
    return sizes


def pools(gpus: int, max_tp: int) -> Iterator[tuple[int, int]]:
    """(replicas, tp) using exactly `gpus`."""
    for t in tp_sizes(min(max_tp, gpus)):
        if gpus % t == 0:
            yield gpus // t, t


def at_cost(gpus: int, max_tp: int, aggregated: bool = True, pd: bool = True) -> list[Candidate]:
    """Every layout using exactly `gpus` accelerators."""
    out: list[Candidate] = []
    if aggregated:
        out += [Candidate(0, 1, k, t) for k, t in pools(gpus, max_tp)]
    if pd:
        for p_gpus in range(1, gpus):
            for p, tp in pools(p_gpus, max_tp):
                out += [Candidate(p, tp, d, td) for d, td in pools(gpus - p_gpus, max_tp)]
    return out
