"""The latency-predictor and tokenizer presets: what enables them, what they merge, what the
renderer makes of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from schemas import check, check_core

from pdserve import api, render
from pdserve.api.resolve import presets, well_known
from testkit import REFERENCE

PREFIX = "kserve-config-llm-"


def _service(scheduler: dict[str, Any], version: str = "v1alpha2") -> dict[str, Any]:
    return {
        "apiVersion": f"serving.kserve.io/{version}",
        "kind": "LLMInferenceService",
        "metadata": {"name": "svc"},
        "spec": {
            "model": {"uri": "hf://org/model"},
            "router": {"route": {}, "gateway": {}, "scheduler": scheduler},
        },
    }


def _epp_config(*plugin_types: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
            "kind": "EndpointPickerConfig",
            "plugins": [{"type": t} for t in plugin_types],
        }
    )


def _resolve(tmp_path: Path, doc: dict[str, Any]) -> Any:
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    [service] = api.resolve_file(str(path))
    return service


def _children(service: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render.render(service)}


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["containers"]}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


# --- latency predictor ------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1alpha1", "v1alpha2"])
@pytest.mark.parametrize("as_mapping", [False, True])
def test_latency_producer_plugin_merges_the_predictor_sidecars(
    tmp_path: Path, version: str, as_mapping: bool
) -> None:
    """KServe v0.20 selects its latency-predictor config by a `predicted-latency-producer`
    plugin in the inline EPP config, right after the scheduler preset."""
    text = _epp_config("predicted-latency-producer", "queue-scorer")
    inline: Any = yaml.safe_load(text) if as_mapping else text
    service = _resolve(tmp_path, _service({"config": {"inline": inline}}, version))
    assert well_known(service.spec)[:3] == [
        PREFIX + "scheduler",
        PREFIX + "scheduler-latency-predictor",
        PREFIX + "router-route",
    ]
    epp = _children(service)[("Deployment", "svc-kserve-router-scheduler")]
    check_core(epp)
    pod = epp["spec"]["template"]["spec"]
    containers = _containers(pod)
    assert list(containers) == ["main", "training-server", "prediction-server"]
    main = containers["main"]
    assert main["command"] == ["pdserve", "epp"]  # the scheduler preset's main, extended
    config = yaml.safe_load(main["args"][main["args"].index("--config-text") + 1])
    assert [p["type"] for p in config["plugins"]] == ["predicted-latency-producer", "queue-scorer"]
    assert _env(main)["PREDICTION_SERVER_URL"] == "http://localhost:8001"
    assert _env(main)["TRAINING_SERVER_URL"] == "http://localhost:8000"
    assert [p["containerPort"] for p in containers["training-server"]["ports"]] == [8000]
    assert [p["containerPort"] for p in containers["prediction-server"]["ports"]] == [8001]
    assert _env(containers["prediction-server"])["TRAINING_SERVER_URL"] == "http://localhost:8000"
    volumes = {v["name"] for v in pod["volumes"]}
    for c in ("training-server", "prediction-server"):
        assert {m["name"] for m in containers[c]["volumeMounts"]} <= volumes


def test_latency_producer_in_main_config_text_counts_too(tmp_path: Path) -> None:
    scheduler = {
        "template": {
            "containers": [
                {
                    "name": "main",
                    "args": ["--config-text", _epp_config("predicted-latency-producer")],
                }
            ]
        }
    }
    service = _resolve(tmp_path, _service(scheduler))
    assert PREFIX + "scheduler-latency-predictor" in well_known(service.spec)


@pytest.mark.parametrize(
    "scheduler",
    [
        {},
        {"config": {"inline": _epp_config("queue-scorer", "max-score-picker")}},
        {"config": {"inline": "plugins: [not: closed"}},  # does not parse: no plugins
        # A ConfigMap ref is not read at this step (KServe's limitation too).
        {"config": {"ref": {"name": "my-epp", "key": "epp"}}},
    ],
    ids=["default", "other-plugins", "unparsable", "configmap-ref"],
)
def test_no_latency_producer_no_predictor(tmp_path: Path, scheduler: dict[str, Any]) -> None:
    service = _resolve(tmp_path, _service(scheduler))
    assert PREFIX + "scheduler-latency-predictor" not in well_known(service.spec)
    objs = render.render(service)
    [epp] = [o for o in objs if o["metadata"]["name"] == "svc-kserve-router-scheduler"]
    [main] = epp["spec"]["template"]["spec"]["containers"]
    assert "PREDICTION_SERVER_URL" not in _env(main)


def test_service_overrides_the_predictor_sidecars(tmp_path: Path) -> None:
    """The service's own template merges last, by container name."""
    scheduler = {
        "config": {"inline": _epp_config("predicted-latency-producer")},
        "template": {
            "containers": [
                {"name": "prediction-server", "env": [{"name": "UVICORN_WORKERS", "value": "2"}]}
            ]
        },
    }
    service = _resolve(tmp_path, _service(scheduler))
    template = api.dump(service)["spec"]["router"]["scheduler"]["template"]
    predictor = _containers(template)["prediction-server"]
    assert _env(predictor)["UVICORN_WORKERS"] == "2"
    assert _env(predictor)["PREDICT_PORT"] == "8001"


# --- tokenizer --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scheduler",
    [
        {"tokenizer": {}},
        {"config": {"inline": _epp_config("token-producer")}},
        {"config": {"inline": _epp_config("precise-prefix-cache-scorer")}},
    ],
    ids=["field", "token-producer", "precise-prefix"],
)
def test_tokenizer_renders_a_render_server(tmp_path: Path, scheduler: dict[str, Any]) -> None:
    """KServe main: `router.scheduler.tokenizer`, or a plugin that needs tokens, merges the
    tokenizer preset right after the scheduler's; a Deployment and Service `<name>-tokenizer`."""
    service = _resolve(tmp_path, _service(scheduler))
    assert well_known(service.spec)[:2] == [PREFIX + "scheduler", PREFIX + "tokenizer"]
    objs = _children(service)
    deployment = objs[("Deployment", "svc-tokenizer")]
    svc = objs[("Service", "svc-tokenizer")]
    check_core(deployment)
    check_core(svc)
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "tokenizer"
    [main] = pod["spec"]["containers"]
    assert main["name"] == "main"
    assert main["ports"] == [{"containerPort": 8000, "name": "render-http", "protocol": "TCP"}]
    assert svc["spec"]["ports"] == [
        {"name": "render-http", "port": 8000, "targetPort": "render-http", "protocol": "TCP"}
    ]
    assert "/mnt/models" in main["command"]
    assert "/mnt/models" in {m["mountPath"] for m in main["volumeMounts"]}
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["storage-initializer"]
    # The tokenizer is its own pod: the EPP's containers are untouched.
    epp = objs[("Deployment", "svc-kserve-router-scheduler")]
    assert [c["name"] for c in epp["spec"]["template"]["spec"]["containers"]] == ["main"]


def test_tokenizer_template_of_the_service_wins(tmp_path: Path) -> None:
    resources = {"requests": {"cpu": "2", "memory": "8Gi"}}
    scheduler = {
        "tokenizer": {"template": {"containers": [{"name": "main", "resources": resources}]}}
    }
    service = _resolve(tmp_path, _service(scheduler))
    deployment = _children(service)[("Deployment", "svc-tokenizer")]
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    assert main["resources"]["requests"] == resources["requests"]
    assert main["image"].startswith("docker.io/vllm/vllm-openai-cpu:")


def test_no_tokenizer_without_field_or_plugin(tmp_path: Path) -> None:
    service = _resolve(tmp_path, _service({"config": {"inline": _epp_config("queue-scorer")}}))
    assert PREFIX + "tokenizer" not in well_known(service.spec)
    assert service.spec.router.scheduler.tokenizer is None
    assert not [o for o in render.render(service) if o["metadata"]["name"] == "svc-tokenizer"]


def test_tokenizer_with_a_pool_ref_merges_but_renders_nothing(tmp_path: Path) -> None:
    """As KServe's main: the preset is selected with any scheduler, but there is no
    tokenizer Deployment for a service whose EPP is another's."""
    service = _resolve(tmp_path, _service({"tokenizer": {}, "pool": {"ref": {"name": "other"}}}))
    assert well_known(service.spec)[0] == PREFIX + "tokenizer"
    assert service.spec.router.scheduler.tokenizer.template is not None
    assert not [o for o in render.render(service) if o["metadata"]["name"] == "svc-tokenizer"]


def test_presets_are_known_by_name() -> None:
    assert {PREFIX + "scheduler-latency-predictor", PREFIX + "tokenizer"} <= set(presets())


# --- conformance ------------------------------------------------------------------------------
def _facts(pod: dict[str, Any]) -> dict[str, Any]:
    """What must agree with upstream for the sidecars to talk: names, images, ports, env
    names, volumes and where they are mounted."""
    return {
        "containers": {
            c["name"]: {
                "image": c.get("image"),
                "ports": sorted((p.get("name"), p["containerPort"]) for p in c.get("ports") or []),
                "env": sorted(e["name"] for e in c.get("env") or []),
                "mounts": sorted((m["name"], m["mountPath"]) for m in c.get("volumeMounts") or []),
            }
            for c in pod["containers"]
        },
        "volumes": sorted(v["name"] for v in pod.get("volumes") or []),
    }


@pytest.mark.conformance
def test_latency_predictor_agrees_with_kserve_v020() -> None:
    path = REFERENCE / "kserve-v0.20" / "presets" / "config-llm-scheduler-latency-predictor.yaml"
    upstream = yaml.safe_load(path.read_text())
    ours = presets()[upstream["metadata"]["name"]]
    pod = ours["spec"]["router"]["scheduler"]["template"]
    assert _facts(pod) == _facts(upstream["spec"]["router"]["scheduler"]["template"])
    for name in ("training-server", "prediction-server"):
        for key in ("startupProbe", "livenessProbe", "readinessProbe"):
            mine, theirs = (
                _containers(pod)[name][key],
                _containers(upstream["spec"]["router"]["scheduler"]["template"])[name][key],
            )
            assert mine["httpGet"] == theirs["httpGet"]


@pytest.mark.conformance
def test_preset_children_validate_against_their_crds(tmp_path: Path) -> None:
    both = _epp_config("predicted-latency-producer", "precise-prefix-cache-scorer")
    service = _resolve(tmp_path, _service({"config": {"inline": both}}))
    for obj in render.render(service):
        check(obj)
