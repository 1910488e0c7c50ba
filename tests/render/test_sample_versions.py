"""Every upstream sample in both API versions: `pdserve validate` accepts it, `pdserve convert`
takes it to the other version as an object KServe v0.20's CRD accepts there, and back to an
equal object (v1alpha1 -> v1alpha2 -> v1alpha1, and the reverse). Files as in test_samples.
"""

from __future__ import annotations

import pytest
import yaml
from schemas import check
from test_samples import SAMPLES, V1ALPHA2

from pdserve.api.convert_file import convert_file
from pdserve.cli import main
from testkit import REFERENCE

pytestmark = pytest.mark.conformance


def _versions(sample: str) -> tuple[str, str]:
    ours, other = "serving.kserve.io/v1alpha2", "serving.kserve.io/v1alpha1"
    return (ours, other) if sample.startswith(V1ALPHA2) else (other, ours)


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_validates_and_satisfies_its_crd(sample: str) -> None:
    path = REFERENCE / sample
    assert main(["validate", str(path)]) == 0
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            check(doc)


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_round_trips_through_the_other_version(sample: str, tmp_path) -> None:
    ours, other = _versions(sample)
    path = REFERENCE / sample
    same, _ = convert_file(path, ours)  # the sample as pdserve reads it, in its own version
    there, dropped = convert_file(path, other)
    assert dropped == []
    for doc in there:
        assert doc["apiVersion"] == other
        check(doc)
    converted = tmp_path / "converted.yaml"
    converted.write_text(yaml.safe_dump_all(there, sort_keys=False))
    back, dropped = convert_file(converted, ours)
    assert dropped == []
    assert back == same
