"""Getting a cluster ready for pdserve: the CRDs generated from the API models, the operator's
install manifests, and the checks a cluster must pass before a manifest can run on it."""
