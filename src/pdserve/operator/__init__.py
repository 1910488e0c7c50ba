"""The operator: keeps each LLMInferenceService's rendered children applied on a cluster and
reports its status as KServe v0.20 does. Reconcile and status are plain functions over
`pdserve.kube.Objects`; kopf and the API server are wired in at the edge."""
