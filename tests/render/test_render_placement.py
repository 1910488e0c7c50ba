"""Placement of multi-node groups: upstream's keys reach the LeaderWorkerSets only when the
manifest asks, and schedulerName passes through the pod templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from schemas import check, check_core

from pdserve import api, render
from pdserve.cli import main
from pdserve.render import placement
from testkit import REPO

DATA = Path(__file__).parent / "data"
EXAMPLE = REPO / "examples" / "multinode-placement.yaml"


def _lws(path: Path) -> dict[str, dict[str, Any]]:
    [service] = api.resolve_file(str(path))
    objs = render.render(service)
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "LeaderWorkerSet"}


def test_the_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "1 file(s) valid\n"


def test_the_example_places_both_pools() -> None:
    groups = _lws(EXAMPLE)
    assert sorted(groups) == ["dsv2-placed-kserve-mn", "dsv2-placed-kserve-mn-prefill"]
    for lws in groups.values():
        assert lws["metadata"]["annotations"] == {
            placement.EXCLUSIVE_TOPOLOGY: "cloud.provider.com/topology-block"
        }
        assert lws["metadata"]["labels"][placement.KAI_QUEUE] == "inference"
        template = lws["spec"]["leaderWorkerTemplate"]
        for pod in (template["leaderTemplate"], template["workerTemplate"]):
            assert pod["metadata"]["labels"][placement.KAI_QUEUE] == "inference"
            assert pod["spec"]["schedulerName"] == "kai-scheduler"
        # the queue label is one more label: the pool still selects the leaders only
        leader = template["leaderTemplate"]["metadata"]["labels"]
        assert leader["kserve.io/component"] == "workload"
        assert "kserve.io/component" not in template["workerTemplate"]["metadata"]["labels"]


@pytest.mark.conformance
def test_the_example_renders_objects_the_crds_accept() -> None:
    [service] = api.resolve_file(str(EXAMPLE))
    for obj in render.render(service, certs=("crt", "key")):
        check(obj)


def test_no_placement_keys_unless_asked() -> None:
    for lws in _lws(DATA / "dp-multinode.yaml").values():
        assert "annotations" not in lws["metadata"]
        labels = [lws["metadata"]["labels"]]
        template = lws["spec"]["leaderWorkerTemplate"]
        labels += [template[t]["metadata"]["labels"] for t in ("leaderTemplate", "workerTemplate")]
        assert all(placement.KAI_QUEUE not in ls for ls in labels)
        assert "schedulerName" not in template["leaderTemplate"]["spec"]


def test_a_pool_annotation_wins_and_deployments_get_none(tmp_path: Path) -> None:
    doc = yaml.safe_load((DATA / "dp-multinode.yaml").read_text())
    doc["metadata"]["annotations"] = {
        placement.EXCLUSIVE_TOPOLOGY: "kubernetes.io/hostname",
        placement.VOLCANO_QUEUE: "llm",
    }
    doc["spec"]["prefill"]["annotations"] = {placement.EXCLUSIVE_TOPOLOGY: "rack"}
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    groups = _lws(path)
    assert groups["dp-kserve-mn"]["metadata"]["annotations"] == {
        placement.EXCLUSIVE_TOPOLOGY: "kubernetes.io/hostname",
        placement.VOLCANO_QUEUE: "llm",
    }
    assert groups["dp-kserve-mn-prefill"]["metadata"]["annotations"] == {
        placement.EXCLUSIVE_TOPOLOGY: "rack",
        placement.VOLCANO_QUEUE: "llm",
    }
    # a single-node service with the same annotations: its Deployment carries none of them
    del doc["spec"]["worker"], doc["spec"]["prefill"]
    path.write_text(yaml.safe_dump(doc))
    [service] = api.resolve_file(str(path))
    objs = {(o["kind"], o["metadata"]["name"]): o for o in render.render(service)}
    deployment = objs[("Deployment", "dp-kserve")]
    check_core(deployment)
    assert "annotations" not in deployment["metadata"]
