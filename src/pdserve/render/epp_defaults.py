"""The EndpointPickerConfig a service gets when it does not bring its own."""

from __future__ import annotations

SINGLE = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: single-profile-handler
  - type: decode-filter
  - type: prefix-cache-scorer
    parameters: {hashBlockSize: 64, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
  - type: load-aware-scorer
    parameters: {threshold: 128}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: decode-filter
      - pluginRef: prefix-cache-scorer
        weight: 2
      - pluginRef: load-aware-scorer
        weight: 1
      - pluginRef: max-score-picker
"""

# P/D: decode is picked first; prefill runs only when the uncached part of the prompt is at
# least `threshold` characters (short prompts are cheaper to prefill on the decode pod).
PD = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: pd-profile-handler
    parameters: {threshold: 256, hashBlockSize: 64}
  - type: prefill-header-handler
  - type: prefill-filter
  - type: decode-filter
  - type: prefix-cache-scorer
    parameters: {hashBlockSize: 64, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
  - type: load-aware-scorer
    parameters: {threshold: 128}
  - type: max-score-picker
schedulingProfiles:
  - name: prefill
    plugins:
      - pluginRef: prefill-filter
      - pluginRef: prefix-cache-scorer
        weight: 2
      - pluginRef: load-aware-scorer
        weight: 1
      - pluginRef: max-score-picker
  - name: decode
    plugins:
      - pluginRef: decode-filter
      - pluginRef: prefix-cache-scorer
        weight: 2
      - pluginRef: load-aware-scorer
        weight: 1
      - pluginRef: max-score-picker
"""
