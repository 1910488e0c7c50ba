"""One scheduling cycle: the handler picks profiles; each filters, scores (sum of clamped
score x weight) and picks; pre-request hooks see the result. Pure: state comes in the Cycle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pdserve.epp.config import Config, Profile
from pdserve.epp.types import Cycle, Endpoint, ProfileResult, Request, Result


@dataclass
class Trace:
    """Per-plugin timings (seconds) for metrics; perf_counter is for reporting only, plugins
    never see it."""

    plugin_seconds: dict[str, float] = field(default_factory=dict)


class Scheduler:
    def __init__(self, config: Config) -> None:
        self.config = config

    def schedule(
        self, cycle: Cycle, req: Request, endpoints: list[Endpoint], trace: Trace | None = None
    ) -> Result:
        cfg = self.config
        # Before any filter: an endpoint whose last scrape failed has a dead engine behind it
        # (a decode-only fallback beats a 502 from a dead prefiller or decoder).
        endpoints = [e for e in endpoints if e.metrics.ready]
        names = list(cfg.profiles)
        done: dict[str, ProfileResult] = {}
        while todo := cfg.handler.pick_profiles(cycle, req, names, done):
            for name in todo:
                done[name] = self._run(cfg.profiles[name], cycle, req, endpoints, trace)
        result = cfg.handler.results(cycle, req, done)
        if result.endpoint is not None:
            for hook in cfg.pre_request:
                hook.pre_request(cycle, req, result)
            cfg.handler.finish(cycle, req, result)
        return result

    def _run(
        self,
        profile: Profile,
        cycle: Cycle,
        req: Request,
        endpoints: list[Endpoint],
        trace: Trace | None,
    ) -> ProfileResult:
        candidates = endpoints
        for f in profile.filters:
            t = time.perf_counter() if trace is not None else 0.0  # no clock read untraced
            candidates = f.filter(cycle, req, candidates)
            if trace is not None:
                _note(trace, f.name, t)
        result = ProfileResult(None, candidates=len(candidates))
        if not candidates:
            return result
        totals = dict.fromkeys((e.name for e in candidates), 0.0)
        for scorer, weight in profile.scorers:
            t = time.perf_counter() if trace is not None else 0.0
            scores = scorer.score(cycle, req, candidates)
            if trace is not None:
                _note(trace, scorer.name, t)
            result.scores[scorer.name] = scores
            for name in totals:
                score = scores.get(name, 0.0)  # clamped to [0, 1], as upstream's weighting
                totals[name] += (0.0 if score < 0.0 else 1.0 if score > 1.0 else score) * weight
        assert profile.picker is not None
        result.endpoints = profile.picker.pick_many(
            cycle, [(e, totals[e.name]) for e in candidates]
        )
        result.endpoint = result.endpoints[0] if result.endpoints else None
        picked = {e.name for e in result.endpoints}
        rest = [e for e in candidates if e.name not in picked]
        rest.sort(key=lambda e: totals[e.name], reverse=True)
        result.fallbacks = [*result.endpoints[1:], *rest]
        return result


def _note(trace: Trace, name: str, start: float) -> None:
    trace.plugin_seconds[name] = trace.plugin_seconds.get(name, 0.0) + (time.perf_counter() - start)
