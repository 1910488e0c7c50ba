"""`pdserve up` refuses bad input in one line (exit 2) and cleans up after a failed start."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import yaml
from upkit import EXAMPLE, all_dead, pdserve


def one_line_error(done, needle: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("pdserve up:") and needle in lines[0], lines[0]


def test_bad_manifest_exits_2_with_the_validate_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    service = next(d for d in docs if d.get("kind") == "LLMInferenceService")
    service["spec"]["replicas"] = -1
    bad.write_text(yaml.safe_dump(service))
    done = pdserve("up", str(bad), "--engine", "sim", "--state-dir", str(tmp_path / "s"))
    validate = pdserve("validate", str(bad))
    assert validate.returncode == 2
    one_line_error(done, "replicas")
    assert validate.stderr.strip().split(": ", 1)[-1] in done.stderr


def test_missing_vllm_install_names_make_engines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PDSERVE_ENGINES_VENV", str(tmp_path / "nowhere"))
    manifest = tmp_path / "svc.yaml"
    manifest.write_text("kind: LLMInferenceService\n")
    done = pdserve("up", str(manifest), "--engine", "vllm", "--state-dir", str(tmp_path / "s"))
    one_line_error(done, "make engines")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        manifest = tmp_path / "svc.yaml"
        manifest.write_text("kind: LLMInferenceService\n")  # the port is checked first
        done = pdserve(
            "up",
            str(manifest),
            "--engine",
            "sim",
            "--port",
            str(busy),
            "--state-dir",
            str(tmp_path / "s"),
        )
    one_line_error(done, f"--port {busy}: already in use")


def test_component_dying_at_start_is_reported_and_the_rest_stopped(
    tmp_path: Path, port: Callable[[], int]
) -> None:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    service = next(d for d in docs if d.get("kind") == "LLMInferenceService")
    # A prefill engine that cannot start: its profile file does not exist.
    prefill = service["spec"].setdefault("prefill", {})
    prefill["template"] = {
        "containers": [{"name": "main", "args": ["--profile", "/no/such/profile.yaml"]}]
    }
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    state = tmp_path / "s"
    done = pdserve(
        "up",
        str(broken),
        "--engine",
        "sim",
        "--detach",
        "--port",
        str(port()),
        "--state-dir",
        str(state),
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "prefill-0 exited" in done.stderr and "last log lines" in done.stderr, done.stderr
    # the tail of the engine's own log, naming the missing file
    assert "/no/such/profile.yaml" in done.stderr.split("last log lines", 1)[1], done.stderr
    import json

    data = json.loads((state / "state.json").read_text())
    assert data["status"] == "failed"
    assert all_dead([data["pid"], *(r["pid"] for r in data["components"] if r.get("pid"))])


def test_a_model_that_cannot_be_downloaded_is_one_line_and_nothing_is_left(
    tmp_path: Path, port: Callable[[], int], monkeypatch, request
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: fail fast, as without network
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    service = next(d for d in docs if d.get("kind") == "LLMInferenceService")
    service["spec"]["model"]["uri"] = "hf://pdserve-tests/no-such-model"
    manifest = tmp_path / "hf.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    state = tmp_path / "s"
    # vLLM engines need the weights (sim engines only a tokenizer): resolution fails before
    # any engine starts. `down` afterwards in case it did not.
    request.addfinalizer(lambda: pdserve("down", "--state-dir", str(state)))
    done = pdserve(
        "up", str(manifest), "--engine", "vllm", "--detach", "--port", str(port()),
        "--state-dir", str(state),
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "hf://pdserve-tests/no-such-model: cannot download" in done.stderr, done.stderr
    import json

    data = json.loads((state / "state.json").read_text())
    assert data["status"] == "failed"
    assert all_dead([data["pid"], *(r["pid"] for r in data["components"] if r.get("pid"))])


def test_down_with_nothing_running_says_so_and_succeeds(tmp_path: Path) -> None:
    done = pdserve("down", "--state-dir", str(tmp_path / "empty"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"nothing running in {tmp_path / 'empty'}"
