"""EndpointPickerConfig loading: our configs, every upstream one (conformance), `--check`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pdserve.epp.config import Config, load
from testkit import PDSERVE, REFERENCE

DATA = Path(__file__).parent / "data"
PD_CONFIG = DATA / "pd-config.yaml"
PRECISE_CONFIG = DATA / "precise-prefix-config.yaml"

# What each upstream file configures, read off the file: the handler's type, then per profile
# its filters, scorers with their weights (1 when the file gives none) and picker (the
# max-score-picker default when it names none).
UPSTREAM = {
    "epp-config.yaml": (
        "single-profile-handler",
        {"default": "decode-filter | prefix-cache-scorer x2 | max-score-picker"},
    ),
    "epp-estimate-prefix-cache-config.yaml": (
        "single-profile-handler",
        {
            "default": "decode-filter | prefix-cache-scorer x1, load-aware-scorer x1 "
            "| max-score-picker"
        },
    ),
    "epp-precise-prefix-cache-config.yaml": (
        "single-profile-handler",
        {
            "default": "decode-filter | precise-prefix-cache-scorer x2, kv-cache-scorer x1, "
            "queue-scorer x1 | max-score-picker"
        },
    ),
    "pd-epp-config.yaml": (
        "pd-profile-handler",
        {
            "prefill": "prefill-filter | prefix-cache-scorer x2 | max-score-picker",
            "decode": "decode-filter | prefix-cache-scorer x2 | max-score-picker",
        },
    ),
    "sim-epp-config.yaml": (
        "single-profile-handler",
        {"default": "decode-filter | prefix-cache-scorer x2 | max-score-picker"},
    ),
    "sim-epp-kvcache-config.yaml": (
        "single-profile-handler",
        {"default": "decode-filter | prefix-cache-scorer x10 | max-score-picker"},
    ),
    "sim-pd-epp-config.yaml": (
        "pd-profile-handler",
        {
            "prefill": "prefill-filter | prefix-cache-scorer x2 | max-score-picker",
            "decode": "decode-filter | prefix-cache-scorer x2 | max-score-picker",
        },
    ),
}


def shape(cfg: Config) -> tuple[str, dict[str, str]]:
    """The handler's type and, per profile, `filters | scorers xweight | picker`."""
    profiles = {}
    for p in cfg.profiles.values():
        filters = ", ".join(f.name for f in p.filters)
        scorers = ", ".join(f"{s.name} x{w:g}" for s, w in p.scorers)
        profiles[p.name] = f"{filters} | {scorers} | {p.picker.name if p.picker else '-'}"
    return cfg.handler.type_name, profiles


def test_our_pd_config_loads_as_written() -> None:
    assert shape(load(PD_CONFIG.read_text(), str(PD_CONFIG))) == (
        "pd-profile-handler",
        {
            "prefill": "prefill-filter | prefix-cache-scorer x3, queue-scorer x1 "
            "| max-score-picker",
            "decode": "decode-filter | prefix-cache-scorer x3, queue-scorer x1 | max-score-picker",
        },
    )


@pytest.mark.conformance
def test_every_upstream_config_is_listed() -> None:
    assert sorted(p.name for p in (REFERENCE / "epp-configs").glob("*.yaml")) == sorted(UPSTREAM)


@pytest.mark.conformance
@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_config_loads(name: str) -> None:
    path = REFERENCE / "epp-configs" / name
    assert shape(load(path.read_text(), str(path))) == UPSTREAM[name]


def test_check_command(tmp_path) -> None:
    good = subprocess.run(
        [*PDSERVE, "epp", "--config-file", str(PD_CONFIG), "--check"],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[:3] == [
        "profile handler: pd-profile-handler (pd-profile-handler)",
        "profile prefill: filter prefill-filter, scorer prefix-cache-scorer x3, "
        "scorer queue-scorer x1, picker max-score-picker",
        "profile decode: filter decode-filter, scorer prefix-cache-scorer x3, "
        "scorer queue-scorer x1, picker max-score-picker",
    ]
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


def test_the_decision_deadline_is_under_envoys_wait_and_must_be_positive() -> None:
    from pdserve.epp import envoy
    from pdserve.epp.cli import epp_parser
    from pdserve.errors import UserError

    default = epp_parser().parse_args([]).decision_deadline
    assert 60 < default < envoy.EPP_TIMEOUT  # past flow control's default TTL
    assert epp_parser().parse_args(["--decision-deadline", "500ms"]).decision_deadline == 0.5
    with pytest.raises(UserError, match=r"--decision-deadline: '0s': must be more than 0"):
        epp_parser().parse_args(["--decision-deadline", "0s"])


@pytest.mark.parametrize("key", ["decodeProfile", "prefillProfile"])
def test_check_rejects_a_pd_handler_naming_a_missing_profile(tmp_path, capsys, key) -> None:
    from pdserve.cli import main

    text = PD_CONFIG.read_text()
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
        f"pdserve epp: {bad}: plugins[0].parameters.{key}: no scheduling profile named 'dec'"
    )


def test_precise_scorer_takes_block_size_from_the_indexer_config() -> None:
    text = PRECISE_CONFIG.read_text()
    scorer = load(text, str(PRECISE_CONFIG)).plugins["precise-prefix-cache-scorer"]
    assert scorer.block == 64  # indexerConfig.tokenProcessorConfig.blockSize, not the default
    assert scorer.params.indexerConfig.tokenProcessorConfig.hashSeed == "42"
    top = load(text.replace("indexerConfig:", "blockSize: 32\n    indexerConfig:"))
    assert top.plugins["precise-prefix-cache-scorer"].block == 32  # a top-level key wins
