"""`pdserve model-job`: a ReadWriteMany claim and a resumable download Job per scheme, the
pvc:// URI to use next, and one-line errors (exit 2) for what it cannot do."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from schemas import check_core

from pdserve import api
from pdserve.cli import main
from pdserve.render import model_job
from testkit import PDSERVE

DATA = Path(__file__).parent / "data"
PD = DATA / "pd-cpu.yaml"


def _with_uri(tmp_path: Path, uri: str) -> Path:
    doc = yaml.safe_load(PD.read_text())
    doc["spec"]["model"]["uri"] = uri
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PDSERVE, "model-job", *args], capture_output=True, text=True)


def _job_script(job: dict[str, Any]) -> str:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return str(container["command"][-1])


def test_hf_model_cli_prints_valid_objects_and_the_uri() -> None:
    out = _run(str(PD), "--size", "2Ti", "--storage-class", "nfs-rwx", "-n", "team-a")
    assert out.returncode == 0, out.stderr
    head, _, _ = out.stdout.partition("\n")
    assert head.startswith("#") and head.endswith(" pvc://opt-pd-model/facebook/opt-125m")
    pvc, job = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in (pvc, job):
        check_core(obj)
        assert obj["metadata"]["namespace"] == "team-a"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert pvc["spec"]["storageClassName"] == "nfs-rwx"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    [volume] = job["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "opt-pd-model"
    script = _job_script(job)
    assert "hf download facebook/opt-125m --local-dir /data/facebook/opt-125m" in script


def test_the_printed_uri_mounts_what_the_job_wrote(tmp_path: Path) -> None:
    [service] = api.resolve_file(str(PD))
    objs, uri = model_job.objects(api.dump(service), "default", "100Gi")
    from pdserve import render

    [after] = api.resolve_file(str(_with_uri(tmp_path, uri)))
    deployment = next(o for o in render.render(after) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "model-volume"]
    assert volume["persistentVolumeClaim"]["claimName"] == objs[0]["metadata"]["name"]
    [main_c] = [c for c in pod["containers"] if c["name"] == "main"]
    [mount] = [m for m in main_c["volumeMounts"] if m["name"] == "model-volume"]
    # the Job wrote /data/<path> on the claim; the engine reads <path> at /mnt/models
    assert f"/data/{mount['subPath']}" in _job_script(objs[1])


def test_hf_revision_pvc_name_and_secret(tmp_path: Path) -> None:
    [service] = api.resolve_file(str(_with_uri(tmp_path, "hf://org/model:v1.2")))
    (pvc, job), uri = model_job.objects(
        api.dump(service), "ns", "500Gi", pvc_name="weights", secret="hf-token"
    )
    assert uri == "pvc://weights/org/model"
    assert pvc["metadata"]["name"] == "weights" and "storageClassName" not in pvc["spec"]
    assert "--revision v1.2" in _job_script(job)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]


def test_s3_model_syncs(tmp_path: Path) -> None:
    [service] = api.resolve_file(str(_with_uri(tmp_path, "s3://my-bucket/models/llama/")))
    (pvc, job), uri = model_job.objects(api.dump(service), "ns", "1Ti")
    assert uri == "pvc://opt-pd-model/my-bucket/models/llama"
    assert "aws s3 sync s3://my-bucket/models/llama/ /data/my-bucket/models/llama" in (
        _job_script(job)
    )
    for obj in (pvc, job):
        check_core(obj)


@pytest.mark.parametrize("size", ["2TB", "0", "0Gi", "-1Ti", "lots", ""])
def test_bad_size_is_one_line_exit_2(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-job", str(PD), f"--size={size}"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "--size" in err.err


@pytest.mark.parametrize(
    "uri", ["oci://registry/model:1", "builtin://smollm2-135m-instruct", "pvc://claim/m", "/models"]
)
def test_other_schemes_are_one_line_exit_2(
    uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model-job", str(_with_uri(tmp_path, uri)), "--size", "1Ti"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "hf:// and s3://" in err.err


def test_bad_pvc_name_is_one_line_exit_2() -> None:
    out = _run(str(PD), "--size", "1Ti", "--pvc-name", "Not_A_Name")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "--pvc-name" in out.stderr
