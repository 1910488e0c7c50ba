#!/usr/bin/env bash
# End to end on a kind cluster, for people with docker and kind (CI cannot run it):
# build the pdserve image, install the operator (`pdserve install -o yaml`), run a
# prefill/decode LLMInferenceService on the simulated engine, and send one completion
# through the gateway and the endpoint picker.
#
#   hack/e2e-kind.sh            # or: make e2e-kind
#   KEEP=1 hack/e2e-kind.sh     # leave the cluster up afterwards
#
# Needs: docker, kind, kubectl, helm, curl, and the pdserve venv (make install).
set -euo pipefail

CLUSTER="${CLUSTER:-pdserve-e2e}"
PYTHON="${PYTHON:-.venv/bin/python}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.3.0}"
# Its manifests.yaml holds the x-k8s.io InferencePool and InferenceModel CRDs (v1alpha1
# services render those); v1.0.0's holds the GA InferencePool (v1alpha2 services).
INFERENCE_EXTENSION_VERSION="${INFERENCE_EXTENSION_VERSION:-v0.5.1}"
KGATEWAY_VERSION="${KGATEWAY_VERSION:-v2.0.4}"
NAMESPACE="${NAMESPACE:-default}"
SERVICE="${SERVICE:-sim-pd}"
LOCAL_PORT="${LOCAL_PORT:-8080}"

cd "$(dirname "$0")/.."
VERSION="$("$PYTHON" -c 'import pdserve; print(pdserve.__version__)')"
IMAGE="ghcr.io/pdserve/pdserve:${VERSION}"

log() { printf '>> %s\n' "$*"; }

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool not found" >&2; exit 2; }
done

cleanup() {
  if [[ -n "${FORWARD_PID:-}" ]]; then kill "$FORWARD_PID" 2>/dev/null || true; fi
  if [[ "${KEEP:-0}" != 1 ]]; then
    log "deleting kind cluster $CLUSTER (KEEP=1 keeps it)"
    kind delete cluster --name "$CLUSTER"
  fi
}
trap cleanup EXIT

log "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-${CLUSTER}"

log "Gateway API ${GATEWAY_API_VERSION} and Inference Extension ${INFERENCE_EXTENSION_VERSION} CRDs"
kubectl apply -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
kubectl apply -f "https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/download/${INFERENCE_EXTENSION_VERSION}/manifests.yaml"

log "kgateway ${KGATEWAY_VERSION} with the inference extension, and the ingress Gateway"
helm upgrade -i --create-namespace --namespace kgateway-system --version "$KGATEWAY_VERSION" \
  kgateway-crds oci://cr.kgateway.dev/kgateway-dev/charts/kgateway-crds
helm upgrade -i --namespace kgateway-system --version "$KGATEWAY_VERSION" \
  kgateway oci://cr.kgateway.dev/kgateway-dev/charts/kgateway \
  --set inferenceExtension.enabled=true --wait
kubectl create namespace kserve --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: kserve-ingress-gateway
  namespace: kserve
spec:
  gatewayClassName: kgateway
  listeners:
    - name: http
      protocol: HTTP
      port: 80
      allowedRoutes:
        namespaces: {from: All}
YAML

log "image $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "pdserve install -o yaml | kubectl apply -f -"
# The presets need the CRDs established first: apply, wait for them, apply again.
"$PYTHON" -m pdserve install -o yaml | kubectl apply -f - || true
kubectl wait --for condition=Established --timeout 60s \
  crd/llminferenceservices.serving.kserve.io crd/llminferenceserviceconfigs.serving.kserve.io
"$PYTHON" -m pdserve install -o yaml | kubectl apply -f -
kubectl -n pdserve-system rollout status deployment/pdserve-operator --timeout 180s

log "LLMInferenceService $NAMESPACE/$SERVICE: prefill and decode on the sim engine"
kubectl apply -n "$NAMESPACE" -f - <<YAML
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata:
  name: ${SERVICE}
spec:
  model:
    uri: hf://HuggingFaceTB/SmolLM2-135M-Instruct
    name: sim
  replicas: 1
  router:
    route: {}
    gateway: {}
    scheduler: {}
  template:
    containers:
      - name: main
        image: ${IMAGE}
        command: ["pdserve", "sim-engine"]
        args: ["--host", "0.0.0.0", "--port", "8001", "--served-model-name", "sim",
               "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_both"}']
        resources:
          requests: {cpu: 100m, memory: 256Mi}
  prefill:
    replicas: 1
    template:
      containers:
        - name: main
          image: ${IMAGE}
          command: ["pdserve", "sim-engine"]
          args: ["--host", "0.0.0.0", "--port", "8000", "--served-model-name", "sim",
                 "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_both"}']
          resources:
            requests: {cpu: 100m, memory: 256Mi}
YAML
kubectl wait -n "$NAMESPACE" --for condition=Ready --timeout 600s "llminferenceservice/${SERVICE}"
kubectl get -n "$NAMESPACE" llminferenceservice "$SERVICE"

log "a completion through the gateway"
kubectl -n kserve port-forward service/kserve-ingress-gateway "${LOCAL_PORT}:80" >/dev/null &
FORWARD_PID=$!
for _ in $(seq 30); do  # until the forward answers at all (any HTTP status)
  curl -s -o /dev/null "http://127.0.0.1:${LOCAL_PORT}/" && break
  sleep 1
done
curl -sf --retry 10 --retry-all-errors --retry-delay 3 \
  "http://127.0.0.1:${LOCAL_PORT}/${NAMESPACE}/${SERVICE}/v1/completions" \
  -H 'Content-Type: application/json' \
  -d '{"model": "sim", "prompt": "Hello from kind", "max_tokens": 16}'
echo
log "e2e-kind: ok"
