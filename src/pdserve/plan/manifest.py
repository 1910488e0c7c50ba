"""A layout as the LLMInferenceService that runs it: the manifest `plan` simulates and the
one it writes, so what was measured is what gets applied.

Shaped as examples/pd-smollm2.yaml: the managed route, gateway and scheduler (the default
EPP config, which picks a prefill pod for P/D), and a main container per pool with no args
(the presets' vLLM args). Each pool asks for its TP group's GPUs and says its
parallelism.tensor, from which render adds --tensor-parallel-size.
"""

from __future__ import annotations

from typing import Any

from pdserve.plan.candidates import Candidate

API_VERSION = "serving.kserve.io/v1alpha1"
GPU = "nvidia.com/gpu"


def service(candidate: Candidate, name: str, model_uri: str, model_name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": model_uri, "name": model_name},
        **_pool(candidate.decode, candidate.decode_tp),
        "router": {"route": {}, "gateway": {}, "scheduler": {}},
    }
    if not candidate.aggregated:
        spec["prefill"] = _pool(candidate.prefill, candidate.prefill_tp)
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMInferenceService",
        "metadata": {"name": name, "annotations": {"pdserve.io/plan": candidate.label}},
        "spec": spec,
    }


def _pool(replicas: int, tp: int) -> dict[str, Any]:
    limits = {GPU: str(tp)}
    return {
        "replicas": replicas,
        "parallelism": {"tensor": tp},
        "template": {"containers": [{"name": "main", "resources": {"limits": limits}}]},
    }
