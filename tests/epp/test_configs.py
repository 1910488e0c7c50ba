"""Every upstream EndpointPickerConfig loads; `pdserve epp --check` reports 0 or 2."""

from __future__ import annotations

import subprocess

import pytest

from pdserve.epp.config import load
from testkit import PDSERVE, REFERENCE

CONFIGS = sorted((REFERENCE / "epp-configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_upstream_config_loads(path) -> None:
    cfg = load(path.read_text(), str(path))
    assert cfg.profiles and cfg.handler is not None
    for profile in cfg.profiles.values():
        assert profile.picker is not None


def test_check_command(tmp_path) -> None:
    good = subprocess.run(
        [*PDSERVE, "epp", "--config-file", str(CONFIGS[0]), "--check"],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0 and "profile" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: "
        "[{pluginRef: nope}]}]\n"
    )
    out = subprocess.run(
        [*PDSERVE, "epp", "--config-file", str(bad), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "schedulingProfiles[0].plugins[0].pluginRef: no plugin named 'nope'" in out.stderr


def test_servers_bind_all_interfaces_by_default() -> None:
    """In a pod, Envoy and the kubelet's probes reach the EPP on the pod IP; the scheduler
    preset passes no --host."""
    from pdserve.epp.cli import epp_parser

    assert epp_parser().parse_args([]).host == "0.0.0.0"
    assert epp_parser().parse_args(["--host", "127.0.0.1"]).host == "127.0.0.1"


@pytest.mark.parametrize("key", ["decodeProfile", "prefillProfile"])
def test_check_rejects_a_pd_handler_naming_a_missing_profile(tmp_path, capsys, key) -> None:
    from pdserve.cli import main

    text = (REFERENCE / "epp-configs" / "pd-epp-config.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace(
            "- type: pd-profile-handler",
            f"- type: pd-profile-handler\n  parameters: {{{key}: dec}}",
        )
    )
    assert main(["epp", "--config-file", str(bad), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"pdserve epp: {bad}: plugin pd-profile-handler: parameter {key}: "
        "no scheduling profile named 'dec'"
    )


def test_precise_scorer_takes_block_size_from_the_indexer_config() -> None:
    path = REFERENCE / "epp-configs" / "epp-precise-prefix-cache-config.yaml"
    scorer = load(path.read_text(), str(path)).plugins["precise-prefix-cache-scorer"]
    assert scorer.block == 64  # indexerConfig.tokenProcessorConfig.blockSize, not the default
    assert scorer.params["hashSeed"] == "42"
    top = load(path.read_text().replace("indexerConfig:", "blockSize: 32\n      indexerConfig:"))
    assert top.plugins["precise-prefix-cache-scorer"].block == 32  # a top-level key wins
