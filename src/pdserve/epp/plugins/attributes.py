"""Endpoint-attribute filter and scorer, as llm-d-router v0.10's (Alpha): generic plugins
over one numeric endpoint attribute, which the core metrics extractor's customMetrics
scrape (Metrics.attributes), so a config can route on an engine metric no built-in plugin
reads."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from pdserve.epp.framework import Filter, Parameters, Plugin, Scorer, register
from pdserve.epp.plugins.datalayer import GPU_UTILIZATION, CoreMetricsExtractor, DCGMDataSource
from pdserve.epp.types import Cycle, Endpoint, Request

Operator = Literal[
    "LessThan", "LessThanOrEqual", "GreaterThan", "GreaterThanOrEqual", "Equal", "NotEqual"
]
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "LessThan": operator.lt,
    "LessThanOrEqual": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanOrEqual": operator.ge,
    "Equal": operator.eq,
    "NotEqual": operator.ne,
}


class Strict(BaseModel):
    model_config = Parameters.model_config


class Threshold(Strict):
    operator: Operator
    value: float = 0.0


class FilterAlgorithm(Strict):
    type: Literal["threshold"]
    threshold: Threshold | None = None

    @model_validator(mode="after")
    def _threshold(self) -> FilterAlgorithm:
        if self.threshold is None:
            raise ValueError('threshold is required when type is "threshold"')
        return self


class AttributeFilterParams(Parameters):
    attribute: str = Field(min_length=1)
    onMissing: Literal["", "Pass", "Fail"] = "Pass"
    fallbackOnEmpty: bool = False
    algorithm: FilterAlgorithm


def produced(plugins: dict[str, Plugin]) -> set[str]:
    """The attribute keys something fills: a core-metrics-extractor's customMetrics, a
    dcgm-data-source feeding a dcgm-extractor."""
    keys: set[str] = set()
    for p in plugins.values():
        if isinstance(p, CoreMetricsExtractor):
            keys |= {c.attribute for metrics in p.custom.values() for c in metrics}
        if isinstance(p, DCGMDataSource) and p.extractor is not None:
            keys.add(GPU_UTILIZATION)
    return keys


NOT_PRODUCED = "no customMetrics entry or fed dcgm-extractor fills it: every endpoint lacks it"


@register("endpoint-attribute-filter")
class EndpointAttributeFilter(Filter):
    """Endpoints whose attribute compares true against threshold.value; one without it is
    kept (onMissing Pass) or dropped (Fail); none left gives all back with fallbackOnEmpty
    (filter/endpointattribute/filter.go Filter)."""

    stability = "alpha"
    Params = AttributeFilterParams
    params: AttributeFilterParams

    def setup(self) -> None:
        threshold = self.params.algorithm.threshold
        assert threshold is not None  # the model demands it
        self.compare, self.value = COMPARE[threshold.operator], threshold.value
        self.keep_missing = self.params.onMissing != "Fail"
        self.plugins: dict[str, Plugin] = {}

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        self.plugins = plugins  # read by inert(), once the dataLayer section is wired too

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        key, kept = self.params.attribute, []
        for e in endpoints:
            value = e.metrics.attributes.get(key)
            if self.keep_missing if value is None else self.compare(value, self.value):
                kept.append(e)
        return endpoints if not kept and self.params.fallbackOnEmpty else kept

    def inert(self) -> dict[str, str]:
        filled = self.params.attribute in produced(self.plugins)
        return {} if filled else {"attribute": NOT_PRODUCED}


class FixedRange(Strict):
    min: float = 0.0
    max: float = 0.0


class Normalization(Strict):
    fixedRange: FixedRange | None = None
    adaptiveRange: dict[str, object] | None = None

    @model_validator(mode="after")
    def _one(self) -> Normalization:
        """At most one strategy; a fixed range must be a range (endpointattribute.go)."""
        if self.fixedRange is not None and self.adaptiveRange is not None:
            raise ValueError("at most one normalization strategy, got fixedRange and adaptiveRange")
        if self.fixedRange is not None and self.fixedRange.min >= self.fixedRange.max:
            raise ValueError("fixedRange requires min < max")
        if self.adaptiveRange:
            raise ValueError("adaptiveRange takes no parameters")
        return self


class ScorerAlgorithm(Strict):
    type: Literal["linear_lower_is_better", "linear_higher_is_better"]
    normalization: Normalization = Field(default_factory=Normalization)


class AttributeScorerParams(Parameters):
    attributeKey: str = Field(min_length=1)
    algorithm: ScorerAlgorithm


@register("endpoint-attribute-scorer")
class EndpointAttributeScorer(Scorer):
    """The attribute normalised linearly, over fixedRange (clamped) or else over the range
    the candidates that have it span (all equal: 1); lower_is_better flips it; an endpoint
    without it scores 0 and does not widen the range (scorer/endpointattribute Score)."""

    stability = "alpha"
    Params = AttributeScorerParams
    params: AttributeScorerParams

    def setup(self) -> None:
        self.plugins: dict[str, Plugin] = {}
        self.lower = self.params.algorithm.type == "linear_lower_is_better"

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        self.plugins = plugins  # read by inert(), once the dataLayer section is wired too

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        key = self.params.attributeKey
        values = {e.name: v for e in endpoints if (v := e.metrics.attributes.get(key)) is not None}
        out = dict.fromkeys((e.name for e in endpoints), 0.0)
        fixed = self.params.algorithm.normalization.fixedRange
        if fixed is not None:
            lo, span = fixed.min, fixed.max - fixed.min
        elif values:
            lo, span = min(values.values()), max(values.values()) - min(values.values())
        for name, v in values.items():
            if fixed is None and span == 0:
                out[name] = 1.0
                continue
            x = min(max((v - lo) / span, 0.0), 1.0)
            out[name] = 1.0 - x if self.lower else x
        return out

    def inert(self) -> dict[str, str]:
        filled = self.params.attributeKey in produced(self.plugins)
        return {} if filled else {"attributeKey": NOT_PRODUCED}
