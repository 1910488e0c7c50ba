"""Pickers: one endpoint from the scored candidates."""

from __future__ import annotations

from pdserve.epp.framework import Picker, register
from pdserve.epp.types import Cycle, Endpoint


@register("max-score-picker")
class MaxScorePicker(Picker):
    """The highest total; ties are broken at random so equal pods share the load."""

    defaults = {"maxNumOfEndpoints": 1}

    def pick(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> Endpoint | None:
        if not scored:
            return None
        best = max(s for _, s in scored)
        return cycle.rng.choice([e for e, s in scored if s == best])


@register("random-picker")
class RandomPicker(Picker):
    defaults = {"maxNumOfEndpoints": 1}

    def pick(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> Endpoint | None:
        return cycle.rng.choice(scored)[0] if scored else None


@register("weighted-random-picker")
class WeightedRandomPicker(Picker):
    """Chance proportional to score; all-zero scores fall back to uniform."""

    defaults = {"maxNumOfEndpoints": 1}

    def pick(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> Endpoint | None:
        if not scored:
            return None
        weights = [max(s, 0.0) for _, s in scored]
        if sum(weights) <= 0:
            return cycle.rng.choice(scored)[0]
        return cycle.rng.choices([e for e, _ in scored], weights=weights)[0]
