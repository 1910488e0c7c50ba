"""pdserve: prefill/decode disaggregated LLM serving, from one KServe manifest."""

__version__ = "0.1.0"
