"""The LLMInferenceService API (v1alpha1 and v1alpha2, v1alpha2 inside): typed models, conversion,
the built-in presets, merge and templating."""

from pdserve.api.loader import ManifestError, load
from pdserve.api.models import dump
from pdserve.api.resolve import resolve, resolve_file
from pdserve.api.v1alpha2 import LLMInferenceService, LLMInferenceServiceConfig

__all__ = [
    "LLMInferenceService",
    "LLMInferenceServiceConfig",
    "ManifestError",
    "dump",
    "load",
    "resolve",
    "resolve_file",
]
