"""Child resource names and labels, exactly as KServe's controller derives them.

Every name is `child_name(service, suffix)` (knative's kmeta.ChildName), the same function
the presets call as `ChildName`, so an object and each reference to it (a pod's secretName,
the sidecar's INFERENCE_POOL_NAME, the EPP's --pool-name, the HTTPRoute backend) agree even
when a long service name has to be hashed down to 63 characters.
"""

from __future__ import annotations

from pdserve.api.template import child_name
from pdserve.wire import (
    COMPONENT_LABEL,
    KSERVE_COMPONENT_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    ROLE_BOTH,
    ROLE_DECODE,
    ROLE_LABEL,
    ROLE_PREFILL,
)

PART_OF_VALUE = "llminferenceservice"


def workload(name: str, prefill: bool = False, multinode: bool = False) -> str:
    suffix = "-kserve-mn" if multinode else "-kserve"
    return child_name(name, suffix + "-prefill" if prefill else suffix)


def workload_sa(name: str) -> str:
    return child_name(name, "-kserve")


def workload_role(name: str) -> str:
    return child_name(name, "-kserve-role")


def workload_rb(name: str) -> str:
    return child_name(name, "-kserve-rb")


def workload_service(name: str) -> str:
    return child_name(name, "-kserve-workload-svc")


def tls_secret(name: str) -> str:
    return child_name(name, "-kserve-self-signed-certs")


def scheduler(name: str) -> str:
    return child_name(name, "-kserve-router-scheduler")


def epp_service(name: str) -> str:
    return child_name(name, "-epp-service")


def tokenizer(name: str) -> str:
    """The standalone tokenizer's Deployment and Service (KServe's main)."""
    return child_name(name, "-tokenizer")


def epp_sa(name: str) -> str:
    return child_name(name, "-epp-sa")


def epp_role(name: str) -> str:
    return child_name(name, "-epp-role")


def epp_rb(name: str) -> str:
    return child_name(name, "-epp-rb")


def inference_pool(name: str) -> str:
    return child_name(name, "-inference-pool")


def inference_model(name: str) -> str:
    return child_name(name, "-inference-model")


def http_route(name: str) -> str:
    return child_name(name, "-kserve-route")


def workload_labels(name: str, prefill: bool, pd: bool, multinode: bool = False) -> dict[str, str]:
    """Labels of the pods that serve HTTP: Deployment pods, or LeaderWorkerSet leaders."""
    role = ROLE_PREFILL if prefill else (ROLE_DECODE if pd else ROLE_BOTH)
    component = "llminferenceservice-workload" + ("-leader" if multinode else "")
    return {
        COMPONENT_LABEL: component + ("-prefill" if prefill else ""),
        NAME_LABEL: name,
        PART_OF_LABEL: PART_OF_VALUE,
        KSERVE_COMPONENT_LABEL: "workload",
        ROLE_LABEL: role,
    }


def worker_labels(name: str, prefill: bool) -> dict[str, str]:
    """LeaderWorkerSet workers run headless engine ranks with no HTTP server, so they
    carry no `kserve.io/component` or role: the pool and Service selectors skip them."""
    return {
        COMPONENT_LABEL: "llminferenceservice-workload-worker" + ("-prefill" if prefill else ""),
        NAME_LABEL: name,
        PART_OF_LABEL: PART_OF_VALUE,
    }


def pool_selector(name: str) -> dict[str, str]:
    """Both pools: the EPP filters by role; prefill and decode pods share the pool."""
    return {NAME_LABEL: name, PART_OF_LABEL: PART_OF_VALUE, KSERVE_COMPONENT_LABEL: "workload"}


def scheduler_labels(name: str) -> dict[str, str]:
    return {
        COMPONENT_LABEL: "llminferenceservice-router-scheduler",
        NAME_LABEL: name,
        PART_OF_LABEL: PART_OF_VALUE,
    }


def tokenizer_labels(name: str) -> dict[str, str]:
    return {COMPONENT_LABEL: "tokenizer", NAME_LABEL: name, PART_OF_LABEL: PART_OF_VALUE}


def owner(name: str) -> dict[str, str]:
    return {PART_OF_LABEL: PART_OF_VALUE, NAME_LABEL: name}


def hpa(name: str, prefill: bool = False) -> str:
    return child_name(name, "-kserve-prefill-hpa" if prefill else "-kserve-hpa")


def scaled_object(name: str, prefill: bool = False) -> str:
    return child_name(name, "-kserve-prefill-keda" if prefill else "-kserve-keda")


def scaling_labels(name: str) -> dict[str, str]:
    """The labels KServe puts on a pool's autoscaler objects (HPA, ScaledObject)."""
    return {
        COMPONENT_LABEL: "llminferenceservice-workload",
        NAME_LABEL: name,
        PART_OF_LABEL: PART_OF_VALUE,
    }
