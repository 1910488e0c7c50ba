"""The LLMInferenceService API: typed models, the built-in presets, merge and templating."""

from pdserve.api.loader import ManifestError, load
from pdserve.api.models import LLMInferenceService, LLMInferenceServiceConfig, dump
from pdserve.api.resolve import resolve, resolve_file

__all__ = [
    "LLMInferenceService",
    "LLMInferenceServiceConfig",
    "ManifestError",
    "dump",
    "load",
    "resolve",
    "resolve_file",
]
