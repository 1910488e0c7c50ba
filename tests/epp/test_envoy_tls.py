"""The gateway's TLS under `pdserve up --tls`: which clusters get it, the listener's HTTPS
beside plain HTTP, and that Envoy itself accepts the result."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pdserve.epp import envoy
from pdserve.tls import self_signed


def _bootstrap(eds: Path) -> dict:
    return envoy.bootstrap(8080, 9002, 9901, ["/ns/svc"], pool=eds, fail_open=True)


def test_engine_facing_clusters_verify_the_run_ca_and_the_epp_stays_plain(
    tmp_path: Path,
) -> None:
    boot = envoy.secure_upstreams(_bootstrap(tmp_path / "eds.json"), tmp_path / "ca.crt")
    sockets = {c["name"]: c.get("transport_socket") for c in boot["static_resources"]["clusters"]}
    assert sockets["epp"] is None
    for name in ("original_dst", envoy.POOL_CLUSTER):
        tls = sockets[name]["typed_config"]
        assert tls["@type"].endswith("UpstreamTlsContext")
        check = tls["common_tls_context"]["validation_context"]
        assert check["trusted_ca"] == {"filename": str(tmp_path / "ca.crt")}
        assert check["match_typed_subject_alt_names"] == [
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
        ]
        assert "trust_chain_verification" not in check  # verification stays on
    listener = boot["static_resources"]["listeners"][0]
    assert "transport_socket" not in listener["filter_chains"][0]  # clients stay on HTTP


def test_the_gateway_offers_tls_beside_plain_http_with_the_same_filters(tmp_path: Path) -> None:
    boot = envoy.accept_tls(_bootstrap(tmp_path / "eds.json"), tmp_path / "c", tmp_path / "k")
    listener = boot["static_resources"]["listeners"][0]
    plain, secure = listener["filter_chains"]
    assert "filter_chain_match" not in plain and "transport_socket" not in plain
    assert secure["filter_chain_match"] == {"transport_protocol": "tls"}
    assert secure["filters"] == plain["filters"] and secure["filters"] is not plain["filters"]
    pair = secure["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"]
    assert pair == [
        {
            "certificate_chain": {"filename": str(tmp_path / "c")},
            "private_key": {"filename": str(tmp_path / "k")},
        }
    ]
    assert [f["name"] for f in listener["listener_filters"]] == [
        "envoy.filters.listener.tls_inspector"
    ]


def test_envoy_validates_the_secured_bootstrap(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    eds = tmp_path / "eds.json"
    eds.write_text(json.dumps(envoy.eds_document([("127.0.0.1", 8000)], 1)))
    config = tmp_path / "envoy.json"
    boot = envoy.accept_tls(envoy.secure_upstreams(_bootstrap(eds), cert), cert, key)
    config.write_text(json.dumps(boot))
    done = subprocess.run(
        [str(envoy.binary()), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    missing = tmp_path / "missing.crt"
    config.write_text(json.dumps(envoy.secure_upstreams(_bootstrap(eds), missing)))
    refused = subprocess.run(
        [str(envoy.binary()), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0  # it does read the CA file: a wrong path is no silent pass
