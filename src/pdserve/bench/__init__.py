"""`pdserve bench`: measure a running OpenAI-API service under a workload.

The workload format and its generator are pure (no I/O, no clock) so that the simulator can
drive the very same request stream in virtual time that bench sends in wall time.
"""
