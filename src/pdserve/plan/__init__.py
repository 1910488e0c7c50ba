"""`pdserve plan`: the cheapest prefill/decode layout (replicas and tensor parallelism per
pool, or aggregated serving) that meets a workload's SLOs, found by simulating each one."""
