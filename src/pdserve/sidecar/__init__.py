"""The routing sidecar: sits in front of a decode engine and runs the P/D handoff.

When the endpoint picker chose a prefill pod (header x-prefiller-host-port), the sidecar
sends the prompt there first, takes the KV handle (kv_transfer_params) from the answer and
has the local engine decode from the transferred cache. Everything else is a plain proxy.
"""
