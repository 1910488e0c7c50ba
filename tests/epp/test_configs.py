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
