"""v1alpha1 <-> v1alpha2 by KServe's rules, on manifests written here; `pdserve convert`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdserve.api.convert import (
    LORA_CRITICALITIES,
    MODEL_CRITICALITY,
    V1ALPHA1,
    V1ALPHA2,
    convert,
    to_v1alpha1,
    to_v1alpha2,
)
from pdserve.api.loader import check, parse
from pdserve.api.models import dump
from pdserve.cli import main

V1 = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata:
  name: svc
  annotations: {team: a}
spec:
  model:
    uri: hf://org/model
    criticality: Sheddable
    lora:
      maxRank: 8
      adapters:
        - {uri: hf://org/a, name: a, criticality: Critical}
        - {uri: hf://org/b, name: b}
        - {uri: hf://org/c, name: c, criticality: Standard}
  replicas: 2
  rolloutStrategy: {maxSurge: 1, maxUnavailable: 25%}
  tracing: {exporter: otlp, sampler: parentbased_traceidratio, samplerArg: "0.1"}
  router:
    route: {group: blue, weight: 30}
    gateway: {refs: [{name: gw, namespace: infra, sectionName: https}]}
    scheduler:
      replicas: 2
      config: {ref: {name: epp, key: config.yaml}}
      tokenizer: {template: {containers: [{name: tokenizer, image: t}]}}
      pool:
        spec:
          selector: {app: x}
          targetPortNumber: 8000
          extensionRef: {name: epp, kind: Service, portNumber: 9002, failureMode: FailOpen}
  prefill:
    scaling:
      minReplicas: 2
      maxReplicas: 4
      wva: {variantCost: "5", keda: {pollingInterval: 15, idleReplicaCount: 1}}
status:
  url: http://svc
  conditions: [{type: Ready, status: "True"}]
  addresses: [{url: http://svc}]
"""


def _v1() -> dict[str, Any]:
    return dump(check(yaml.safe_load(V1), "svc.yaml"))


def test_criticalities_travel_in_annotations() -> None:
    up = to_v1alpha2(_v1())
    assert up["apiVersion"] == V1ALPHA2
    notes = up["metadata"]["annotations"]
    assert notes[MODEL_CRITICALITY] == "Sheddable"
    assert json.loads(notes[LORA_CRITICALITIES]) == {"0": "Critical", "2": "Standard"}
    assert notes[LORA_CRITICALITIES] == '{"0":"Critical","2":"Standard"}'  # Go's encoding
    assert "criticality" not in up["spec"]["model"]
    assert all("criticality" not in a for a in up["spec"]["model"]["lora"]["adapters"])
    check(up, "up")  # a valid v1alpha2 object


def test_pool_spec_becomes_the_ga_shape() -> None:
    pool = to_v1alpha2(_v1())["spec"]["router"]["scheduler"]["pool"]["spec"]
    assert pool == {
        "selector": {"matchLabels": {"app": "x"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {
            "kind": "Service",
            "name": "epp",
            "port": {"number": 9002},
            "failureMode": "FailOpen",
        },
    }


def test_pool_spec_defaults_as_gie_converts() -> None:
    """GIE's conversion: kind Service and port 9002 when absent; FailClose by default."""
    up = to_v1alpha2(
        {
            "apiVersion": V1ALPHA1,
            "kind": "LLMInferenceServiceConfig",
            "metadata": {"name": "c"},
            "spec": {"router": {"scheduler": {"pool": {"spec": {"targetPortNumber": 8000}}}}},
        }
    )
    ref = up["spec"]["router"]["scheduler"]["pool"]["spec"]["endpointPickerRef"]
    assert ref == {
        "kind": "Service",
        "name": "",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }


def test_round_trip_v1alpha1_is_lossless() -> None:
    v1 = _v1()
    back = to_v1alpha1(to_v1alpha2(v1))
    assert back.dropped == []
    assert back.doc == v1


def test_round_trip_v1alpha2_is_lossless() -> None:
    v2 = to_v1alpha2(_v1())
    assert to_v1alpha2(to_v1alpha1(v2).doc) == v2


def test_v1alpha2_only_fields_are_dropped_and_named() -> None:
    v2 = dump(
        check(yaml.safe_load(Path("tests/render/data/pd-cpu-v1alpha2.yaml").read_text()), "f")
    )
    down = to_v1alpha1(v2)
    assert down.dropped == [
        "spec.kvCacheOffloading",
        "spec.prefill.kvCacheOffloading",
        "spec.model.confidential",
    ]
    check(down.doc, "down")


def test_status_keeps_what_both_versions_have() -> None:
    v2 = to_v1alpha2(_v1())
    v2["status"]["addresses"][0]["origin"] = {"kind": "Gateway", "name": "gw"}
    v2["status"]["workloads"] = {"primary": {"kind": "Deployment", "name": "d"}}
    down = to_v1alpha1(v2).doc["status"]
    assert down == {
        "url": "http://svc",
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"url": "http://svc"}],
    }


def test_unreadable_lora_annotation_restores_nothing_and_is_removed() -> None:
    v2 = to_v1alpha2(_v1())
    v2["metadata"]["annotations"][LORA_CRITICALITIES] = "{not json"
    down = to_v1alpha1(v2).doc
    assert LORA_CRITICALITIES not in down["metadata"]["annotations"]
    assert all("criticality" not in a for a in down["spec"]["model"]["lora"]["adapters"])


def test_same_version_is_unchanged() -> None:
    v1 = _v1()
    assert convert(v1, V1ALPHA1).doc == v1


def test_loader_reads_v1alpha1_as_v1alpha2() -> None:
    svc = parse(yaml.safe_load(V1), "svc.yaml")
    assert svc.api_version == V1ALPHA2
    assert svc.metadata.annotations and svc.metadata.annotations[MODEL_CRITICALITY] == "Sheddable"


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    return str(path)


def test_convert_cli_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, V1)
    assert main(["convert", path, "--to", "v1alpha2"]) == 0
    up = capsys.readouterr().out
    assert yaml.safe_load(up)["apiVersion"] == V1ALPHA2
    (tmp_path / "up.yaml").write_text(up)
    assert main(["convert", str(tmp_path / "up.yaml"), "--to", "v1alpha1"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == _v1()


def test_convert_cli_names_dropped_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = "tests/render/data/pd-cpu-v1alpha2.yaml"
    assert main(["convert", src, "--to", "v1alpha1"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"{src}: spec.kvCacheOffloading: dropped, serving.kserve.io/v1alpha1 has no such field"
    )
    assert len(err) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            V1.replace("criticality: Sheddable", "criticality: Low"),
            "spec.model.criticality: must be",
        ),
        (V1.replace("v1alpha1", "v1beta1"), "apiVersion: expected serving.kserve.io/v1alpha1 or"),
        ("a: [", "YAML syntax error"),
    ],
    ids=["bad criticality", "bad apiVersion", "yaml"],
)
def test_convert_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    assert main(["convert", path, "--to", "v1alpha2"]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(path) and expected in line
    assert captured.out == ""
