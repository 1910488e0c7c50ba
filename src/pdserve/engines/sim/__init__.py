"""A simulated vLLM engine: vLLM's wire protocol, a modelled clock and a real paged KV cache.

The timing and cache model (profile, block_manager, scheduler) is a library with no I/O:
a virtual-time fleet simulator drives it by calling `Scheduler.step()` and advancing its own
clock by the returned duration; `server` is the thin HTTP shell that does the same in real time.
"""
