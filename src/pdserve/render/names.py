"""Child resource names and labels, exactly as KServe's controller derives them."""

from __future__ import annotations

from pdserve.api.template import child_name
from pdserve.wire import ROLE_BOTH, ROLE_DECODE, ROLE_LABEL, ROLE_PREFILL


def workload(name: str, prefill: bool = False, multinode: bool = False) -> str:
    base = child_name(name, "-kserve-mn" if multinode else "-kserve")
    return base + "-prefill" if prefill else base


def workload_labels(name: str, prefill: bool, pd: bool) -> dict[str, str]:
    role = ROLE_PREFILL if prefill else (ROLE_DECODE if pd else ROLE_BOTH)
    return {
        "app.kubernetes.io/component": "llminferenceservice-workload"
        + ("-prefill" if prefill else ""),
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "kserve.io/component": "workload",
        ROLE_LABEL: role,
    }


def pool_selector(name: str) -> dict[str, str]:
    """Both pools: the EPP filters by role; prefill and decode pods share the pool."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "kserve.io/component": "workload",
    }


def scheduler_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": "llminferenceservice-router-scheduler",
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "llminferenceservice",
    }


def owner(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "llminferenceservice", "app.kubernetes.io/name": name}
