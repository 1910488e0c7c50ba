"""Pickers: the best endpoints (maxNumOfEndpoints of them) from the scored candidates."""

from __future__ import annotations

from pdserve.epp.framework import Parameters, Picker, register
from pdserve.epp.types import Cycle, Endpoint


class PickerParams(Parameters):
    maxNumOfEndpoints: int = 1  # <= 0 loads and means 1, as upstream (maxscore/picker.go)


class _Picker(Picker):
    Params = PickerParams
    params: PickerParams

    @property
    def count(self) -> int:
        return max(self.params.maxNumOfEndpoints, 1)

    def inert(self) -> dict[str, str]:
        if self.count > 1:
            return {"maxNumOfEndpoints": "only the first pick is the destination (no fallbacks)"}
        return {}


@register("max-score-picker")
class MaxScorePicker(_Picker):
    """Shuffle, then stable sort by score: the highest totals, ties broken at random."""

    def pick_many(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        order = list(scored)
        cycle.rng.shuffle(order)
        order.sort(key=lambda es: -es[1])
        return [e for e, _ in order[: self.count]]


@register("random-picker")
class RandomPicker(_Picker):
    def pick_many(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        order = [e for e, _ in scored]
        cycle.rng.shuffle(order)
        return order[: self.count]


@register("weighted-random-picker")
class WeightedRandomPicker(_Picker):
    """Weighted sampling without replacement, as upstream (A-Res: key u^(1/score), the
    largest keys win), so one pick has chance score / sum; all scores <= 0: uniform."""

    def pick_many(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        if not any(s > 0 for _, s in scored):
            order = [e for e, _ in scored]
            cycle.rng.shuffle(order)
            return order[: self.count]
        keyed = [((cycle.rng.random() or 1e-10) ** (1 / s) if s > 0 else 0.0, e) for e, s in scored]
        keyed.sort(key=lambda ke: -ke[0])
        return [e for _, e in keyed[: self.count]]
