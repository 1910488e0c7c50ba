"""Filters: which endpoints a profile may pick from."""

from __future__ import annotations

from pdserve.epp.framework import ConfigError, Filter, register
from pdserve.epp.types import Cycle, Endpoint, Request
from pdserve.wire import ROLE_BOTH, ROLE_DECODE, ROLE_LABEL, ROLE_PREFILL


@register("decode-filter")
class DecodeFilter(Filter):
    """Decode or aggregated pods; a pod without the role label counts as both."""

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role in (None, ROLE_DECODE, ROLE_BOTH)]


@register("prefill-filter")
class PrefillFilter(Filter):
    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role == ROLE_PREFILL]


@register("by-label")
class ByLabel(Filter):
    defaults = {"label": ROLE_LABEL, "validValues": [], "allowsNoLabel": False}

    def setup(self) -> None:
        if not isinstance(self.params["validValues"], list):
            raise ConfigError("parameter validValues: must be a list")

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        key, valid = self.params["label"], set(self.params["validValues"])
        return [
            e
            for e in endpoints
            if e.labels.get(key) in valid or (key not in e.labels and self.params["allowsNoLabel"])
        ]


@register("by-label-selector")
class ByLabelSelector(Filter):
    """A Kubernetes label selector: matchLabels and matchExpressions (In, NotIn, Exists,
    DoesNotExist)."""

    defaults = {"matchLabels": {}, "matchExpressions": []}

    def setup(self) -> None:
        for i, expr in enumerate(self.params["matchExpressions"]):
            if expr.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise ConfigError(
                    f"parameter matchExpressions[{i}].operator: "
                    f"unknown operator {expr.get('operator')!r}"
                )

    def _matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.params["matchLabels"].items()):
            return False
        for expr in self.params["matchExpressions"]:
            key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
            present = key in labels
            if (
                (op == "In" and labels.get(key) not in values)
                or (op == "NotIn" and present and labels[key] in values)
                or (op == "Exists" and not present)
                or (op == "DoesNotExist" and present)
            ):
                return False
        return True

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if self._matches(e.labels)]
