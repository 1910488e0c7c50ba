"""Kubernetes strategic merge, as far as LLMInferenceService specs need it.

Maps merge recursively; lists of named things (containers, env, volumes, volumeMounts,
ports) merge element by element on Kubernetes' patch merge key for them; any other list is
replaced, as Kubernetes does for lists without a patch merge key (tolerations among them:
a config's tolerations are replaced by the service's, not combined). `null` in the overlay
deletes the key, as in a strategic merge patch.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",  # as Kubernetes keys them: two mounts of one volume differ here
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}


def merge(base: Any, overlay: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for k, v in overlay.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(overlay, list) and key in MERGE_KEYS:
        return _merge_list(base, overlay, MERGE_KEYS[key])
    return copy.deepcopy(overlay)


def _merge_list(base: list[Any], overlay: list[Any], field: str) -> list[Any]:
    if not all(isinstance(x, dict) and field in x for x in base + overlay):
        return copy.deepcopy(overlay)
    out = [copy.deepcopy(x) for x in base]
    index = {x[field]: i for i, x in enumerate(out)}
    for item in overlay:
        i = index.get(item[field])
        if i is None:
            index[item[field]] = len(out)
            out.append(copy.deepcopy(item))
        else:
            out[i] = merge(out[i], item)
    return out
