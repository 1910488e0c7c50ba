"""model.uri resolution: local schemes, errors, and the built-in SmolLM2 conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdserve.engines import model, venv
from pdserve.errors import UserError


def hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_local_schemes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = hf_folder(tmp_path / "m")
    assert model.resolve(str(folder)) == folder
    assert model.resolve(f"file://{folder}") == folder
    monkeypatch.setenv("PDSERVE_PVC_ROOT", str(tmp_path))
    assert model.resolve("pvc://m") == folder


@pytest.mark.parametrize(
    "uri, message",
    [
        ("/no/such/folder", "is not a folder"),
        ("s3://bucket/model", "cannot be fetched on one machine"),
        ("builtin://llama-9000", "unknown; built in: smollm2-135m-instruct"),
    ],
)
def test_errors_are_one_line(uri: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        model.resolve(uri)
    assert "\n" not in str(err.value)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        model.resolve(str(tmp_path))


def test_builtin_needs_the_engines_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDSERVE_ENGINES_VENV", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="make engines"):
        model.resolve("builtin://smollm2-135m-instruct", cache=tmp_path / "cache")


@pytest.mark.slow
def test_builtin_converts_once_to_an_hf_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert venv.find() is not None, "the engines venv is built by `make engines`"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # torch, imported by the converter, writes here
    steps: list[str] = []
    out = model.resolve("builtin://smollm2-135m-instruct", steps.append, cache=tmp_path / "c")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (out / "model.safetensors").stat().st_size > 200e6  # bf16, not the 93 MB Q4_1
    template = (out / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    assert any("converting" in s for s in steps)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folder left
    assert list(scratch.iterdir()) == []  # its compile cache is in pdserve's cache folder
    again: list[str] = []
    assert (
        model.resolve("builtin://smollm2-135m-instruct", again.append, cache=tmp_path / "c") == out
    )
    assert again == []  # cached: no second conversion


def test_a_stop_during_conversion_takes_the_converter_with_it(tmp_path: Path) -> None:
    """`down` raises in the supervisor mid-conversion: the converter must not outlive it."""
    from pdserve.process import pid_alive

    pidfile = tmp_path / "converter.pid"
    fake = tmp_path / "python"  # stands in for the engines venv's python and the script
    fake.write_text(
        f'#!/bin/sh\necho $$ > {pidfile}\necho \'{{"stage": "reading"}}\'\nexec sleep 600\n'
    )
    fake.chmod(0o755)

    def stop(_: str) -> None:
        raise KeyboardInterrupt  # what the supervisor's SIGTERM handler raises, in effect

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        model._convert(fake, tmp_path / "model.gguf", out, stop)
    assert not pid_alive(int(pidfile.read_text()))
