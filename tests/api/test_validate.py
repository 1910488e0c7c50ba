"""Malformed manifests: exit 2 and one line naming the field or line, never a traceback."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from pdserve.cli import main
from testkit import PDSERVE

GOOD = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata:
  name: svc
spec:
  model:
    uri: hf://org/model
  replicas: 1
  template:
    containers:
      - name: main
  prefill:
    replicas: 1
  router:
    scheduler: {}
    route: {}
"""


def _sub(old: str, new: str, base: str = GOOD) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


# A service without a router, as one that joins another service's pool would be.
NO_ROUTER = _sub("  router:\n    scheduler: {}\n    route: {}\n", "")


CONFIG = """\
---
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceServiceConfig
metadata:
  name: extra
spec:
  template:
    containers:
      - name: main
        args: ["{{ .Spec.Nope.Name }}"]
"""

BAD: dict[str, tuple[str, str]] = {
    "negative replicas": (
        _sub("  replicas: 1\n  template", "  replicas: -1\n  template"),
        "spec.replicas: must be >= 0",
    ),
    "negative prefill replicas": (
        _sub("    replicas: 1\n  router", "    replicas: -2\n  router"),
        "spec.prefill.replicas: must be >= 0",
    ),
    "replicas wrong type": (
        _sub("  replicas: 1\n  template", "  replicas: two\n  template"),
        "spec.replicas: must be an integer",
    ),
    "unknown spec field": (
        _sub("  replicas: 1\n", "  replica: 1\n"),
        "spec.replica: unknown field",
    ),
    "unknown model field": (
        _sub("    uri: hf://org/model\n", "    uri: hf://org/model\n    url: x\n"),
        "spec.model.url: unknown field",
    ),
    "unknown router field": (
        _sub("    route: {}\n", "    routes: {}\n"),
        "spec.router.routes: unknown field",
    ),
    "missing model uri": (
        _sub("    uri: hf://org/model\n", "    name: m\n"),
        "spec.model.uri: required",
    ),
    "missing model": (_sub("  model:\n    uri: hf://org/model\n", ""), "spec.model.uri: required"),
    "unknown uri scheme": (
        _sub("hf://org/model", "ftp://org/model"),
        "spec.model.uri: unknown scheme 'ftp'",
    ),
    "bad criticality": (
        _sub("    uri: hf://org/model\n", "    uri: hf://org/model\n    criticality: Urgent\n"),
        "spec.model.criticality: must be",
    ),
    "missing baseRef": (
        _sub("spec:\n", "spec:\n  baseRefs:\n    - name: nowhere\n"),
        "spec.baseRefs[0].name: LLMInferenceServiceConfig 'nowhere' not found",
    ),
    "missing template key": (
        _sub("spec:\n", "spec:\n  baseRefs:\n    - name: extra\n") + CONFIG,
        "map has no entry for key '.Spec.Nope.Name'",
    ),
    "yaml syntax error": ("apiVersion: x\nkind: [unclosed\nmetadata: {}\n", "line 3"),
    "wrong kind": (
        _sub("kind: LLMInferenceService\n", "kind: InferenceService\n"),
        "kind: expected LLMInferenceService or LLMInferenceServiceConfig",
    ),
    "wrong apiVersion": (
        _sub("serving.kserve.io/v1alpha1", "serving.kserve.io/v1beta1"),
        "apiVersion: expected serving.kserve.io/v1alpha1",
    ),
    "empty file": ("", "empty file"),
    "only comments": ("# nothing here\n", "empty file"),
    "not a mapping": ("- a\n- b\n", "expected a mapping"),
    "missing name": (_sub("  name: svc\n", "  labels: {a: b}\n"), "metadata.name: required"),
    "tensor zero": (
        _sub("  replicas: 1\n  template", "  parallelism: {tensor: 0}\n  replicas: 1\n  template"),
        "spec.parallelism.tensor: must be >= 1",
    ),
    "rpc port too high": (
        _sub(
            "  replicas: 1\n  template",
            "  parallelism: {dataRPCPort: 70000}\n  replicas: 1\n  template",
        ),
        "spec.parallelism.dataRPCPort: must be <= 65535",
    ),
    "expert not bool": (
        _sub(
            "  replicas: 1\n  template", "  parallelism: {expert: maybe}\n  replicas: 1\n  template"
        ),
        "spec.parallelism.expert: must be a boolean",
    ),
    "container without name": (
        _sub("      - name: main\n", "      - image: x\n"),
        "spec.template.containers[0].name: required",
    ),
    "port out of range": (
        _sub("      - name: main\n", "      - name: main\n        ports: [{containerPort: 0}]\n"),
        "spec.template.containers[0].ports[0].containerPort: must be >= 1",
    ),
    "env without name": (
        _sub("      - name: main\n", "      - name: main\n        env: [{value: x}]\n"),
        "spec.template.containers[0].env[0].name: required",
    ),
    "args not a list": (
        _sub("      - name: main\n", "      - name: main\n        args: --x\n"),
        "spec.template.containers[0].args: must be a list",
    ),
    "replicas and scaling": (
        _sub(
            "  replicas: 1\n  template",
            "  replicas: 1\n  scaling: {maxReplicas: 2, wva: {hpa: {}}}\n  template",
        ),
        "replicas and scaling are mutually exclusive",
    ),
    "gateway ref without name": (
        _sub("    route: {}\n", "    route: {}\n    gateway:\n      refs: [{namespace: x}]\n"),
        "spec.router.gateway.refs[0].name: required",
    ),
    "unknown scheduler field": (
        _sub("    scheduler: {}\n", "    scheduler: {poool: {}}\n"),
        "spec.router.scheduler.poool: unknown field",
    ),
    "prefill unknown field": (
        _sub("    replicas: 1\n  router", "    replicas: 1\n    templat: {}\n  router"),
        "spec.prefill.templat: unknown field",
    ),
    "lora maxRank zero": (
        _sub("    uri: hf://org/model\n", "    uri: hf://org/model\n    lora: {maxRank: 0}\n"),
        "spec.model.lora.maxRank: must be >= 1",
    ),
    "spec not a mapping": (GOOD.split("spec:")[0] + "spec: 3\n", "spec: must be an object"),
    "duplicate yaml indent error": ("apiVersion: a\n  kind: b\n", "YAML syntax error"),
    "label takes the pods out of the service's own pool": (
        _sub(
            "  replicas: 1\n  template",
            "  labels: {app.kubernetes.io/name: x}\n  replicas: 1\n  template",
        ),
        "spec.labels.app.kubernetes.io/name: cannot override a selector label (the service's "
        "own InferencePool selects its pods by it",
    ),
    "prefill label takes the pods out of the service's own pool": (
        _sub(
            "    replicas: 1\n  router",
            "    replicas: 1\n    labels: {kserve.io/component: none}\n  router",
        ),
        "spec.prefill.labels.kserve.io/component: cannot override a selector label (the "
        "service's own InferencePool selects its pods by it",
    ),
    "role label on a service without a router": (
        _sub("  replicas: 1\n", "  replicas: 1\n  labels: {llm-d.ai/role: prefill}\n", NO_ROUTER),
        "spec.labels.llm-d.ai/role: cannot override a selector label (the endpoint picker",
    ),
    "component label on a service without a router": (
        _sub(
            "  replicas: 1\n",
            "  replicas: 1\n  labels: {app.kubernetes.io/component: x}\n",
            NO_ROUTER,
        ),
        "spec.labels.app.kubernetes.io/component: cannot override a selector label",
    ),
    "prefill label overrides the role": (
        _sub(
            "    replicas: 1\n  router",
            "    replicas: 1\n    labels: {llm-d.ai/role: decode}\n  router",
        ),
        "spec.prefill.labels.llm-d.ai/role: cannot override a selector label",
    ),
    "scheduler label overrides the component": (
        _sub("    scheduler: {}\n", "    scheduler: {labels: {app.kubernetes.io/component: x}}\n"),
        "spec.router.scheduler.labels.app.kubernetes.io/component: cannot override",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_bad_manifest_gives_exit_2_and_one_line(case, tmp_path, capsys) -> None:
    text, expected = BAD[case]
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(str(path)), err
    assert expected in err[0], err


def test_enough_malformed_cases() -> None:
    assert len(BAD) >= 30


def test_good_manifest_and_example_validate(tmp_path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "examples/pd-smollm2.yaml"]) == 0


def test_cli_process_exit_code_and_no_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(BAD["negative prefill replicas"][0]))
    proc = subprocess.run([*PDSERVE, "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{bad}: spec.prefill.replicas: must be >= 0"
    render = subprocess.run([*PDSERVE, "render", str(bad)], capture_output=True, text=True)
    assert render.returncode == 2 and "Traceback" not in render.stderr


def test_config_dir_supplies_base_refs(tmp_path) -> None:
    cfgdir = tmp_path / "configs"
    cfgdir.mkdir()
    (cfgdir / "extra.yaml").write_text(
        CONFIG.replace("{{ .Spec.Nope.Name }}", "--x={{ .Spec.Model.Name }}")
    )
    path = tmp_path / "svc.yaml"
    path.write_text(_sub("spec:\n", "spec:\n  baseRefs:\n    - name: extra\n"))
    from pdserve import api

    [svc] = api.resolve_file(str(path), str(cfgdir))
    [main_c] = api.dump(svc)["spec"]["template"]["containers"]
    assert main_c["args"] == ["--x=svc"]  # the baseRef's args, templated with the model name


def test_user_labels_that_do_not_collide_reach_the_pods(tmp_path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        _sub("  replicas: 1\n  template", "  labels: {team: a}\n  replicas: 1\n  template")
    )
    from pdserve import api, render

    [svc] = api.resolve_file(str(path))
    objs = {(o["kind"], o["metadata"]["name"]): o for o in render.render(svc)}
    decode = objs[("Deployment", "svc-kserve")]
    assert decode["spec"]["template"]["metadata"]["labels"]["team"] == "a"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PDSERVE, *args], capture_output=True, text=True)


def test_missing_config_dir_is_one_line_exit_2(tmp_path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(GOOD)
    missing = tmp_path / "nonexistent"
    for cmd in ("validate", "render"):
        proc = _cli(cmd, str(path), "--config-dir", str(missing))
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"{missing}: cannot read config dir"), line


def test_non_utf8_manifest_is_one_line_exit_2(tmp_path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(GOOD.replace("name: svc", "name: caf\xe9").encode("latin-1"))
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"{bad}: not UTF-8"), line
    cfgdir = tmp_path / "configs"
    cfgdir.mkdir()
    (cfgdir / "extra.yaml").write_bytes(b"\xff\xfe" + CONFIG.encode())
    good = tmp_path / "svc.yaml"
    good.write_text(GOOD)
    proc = _cli("validate", str(good), "--config-dir", str(cfgdir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"{cfgdir / 'extra.yaml'}: not UTF-8"), line


POOL_LABELS = (
    "  labels:\n"
    "    app.kubernetes.io/name: other\n"
    "    app.kubernetes.io/part-of: llminferenceservice\n"
    "    kserve.io/component: workload\n"
)


POOL_REF = "  router:\n    scheduler:\n      pool: {ref: {name: other-inference-pool}}\n"


@pytest.mark.parametrize("router", ["", POOL_REF], ids=["no router", "scheduler with pool.ref"])
def test_a_service_without_a_pool_may_join_another_services_pool(tmp_path, router) -> None:
    """KServe v0.19+: its pods carry the other's pool labels, so that pool selects them."""
    path = tmp_path / "svc.yaml"
    path.write_text(_sub("  replicas: 1\n", "  replicas: 1\n" + POOL_LABELS + router, NO_ROUTER))
    proc = _cli("validate", str(path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "1 file(s) valid\n", "")


def test_a_service_with_its_own_pool_may_not_leave_it(tmp_path) -> None:
    """Its scheduler's InferencePool would select none of its pods: one line, exit 2."""
    path = tmp_path / "svc.yaml"
    path.write_text(
        _sub("  replicas: 1\n", "  replicas: 1\n  labels: {app.kubernetes.io/name: other}\n")
    )
    proc = _cli("validate", str(path))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        f"{path}: spec.labels.app.kubernetes.io/name: cannot override a selector label (the "
        "service's own InferencePool selects its pods by it; only a service without a "
        "scheduler may set it, to join another's pool)\n"
    )
