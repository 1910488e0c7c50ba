"""Property tests (issue 13): a known-good manifest, mutated field by field, either loads,
resolves and renders objects Kubernetes 1.33 accepts, or is refused with ManifestError, one
line per problem; never another exception. Derandomized, so a CI run is reproducible."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pdserve import api, render
from pdserve.api.convert import V1ALPHA1, V1ALPHA2, convert
from pdserve.api.loader import check, parse
from pdserve.api.models import MAX_FREE_DEPTH, dump
from testkit import nested

sys.path.insert(0, str(Path(__file__).parents[1] / "render"))
from schemas import check_core  # tests/render/schemas.py, as its tests import it

GOOD = yaml.safe_load((Path(__file__).parents[1] / "render/data/pd-cpu.yaml").read_text())
FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "1", "-1", "8000", "😀", "\u202e", "a" * 300, "{{ .Nope }}", "%"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
) | st.sampled_from([nested(50), nested(300)])


def test_deep_pod_template_field_is_a_problem_line(tmp_path) -> None:
    """Found by the property below: 300 levels under a pod template made pydantic's dump
    raise ValueError("Maximum serialization depth exceeded"), a traceback from validate;
    validation now refuses it, naming the field."""
    doc = copy.deepcopy(GOOD)
    doc["spec"]["template"]["a"] = nested(300)
    try:
        api.resolve_file(str(_write(tmp_path, doc)))
    except api.ManifestError as err:
        assert err.problems == [
            f"{tmp_path / 'svc.yaml'}: spec.template.a: nested too deeply: more than 200 levels"
        ]
    else:
        raise AssertionError("accepted")


def test_a_deep_free_form_field_outside_the_template_is_named_too(tmp_path) -> None:
    doc = copy.deepcopy(GOOD)
    doc["status"] = {"conditions": nested(300)}
    with pytest.raises(api.ManifestError) as caught:
        api.resolve_file(str(_write(tmp_path, doc)))
    assert caught.value.problems == [
        f"{tmp_path / 'svc.yaml'}: status.conditions: nested too deeply: more than 200 levels"
    ]


def test_a_free_form_field_at_the_depth_limit_validates_and_dumps(tmp_path) -> None:
    """The deepest place: a container's field in a pool's template, where pydantic counts
    the models around the value too."""
    doc = copy.deepcopy(GOOD)
    doc["spec"]["prefill"]["template"]["containers"][0]["x"] = nested(MAX_FREE_DEPTH)
    api.resolve_file(str(_write(tmp_path, doc)))
    doc["spec"]["prefill"]["template"]["containers"][0]["x"] = nested(MAX_FREE_DEPTH + 1)
    with pytest.raises(api.ManifestError, match=r"spec\.prefill\.template\.containers\[0\]\.x:"):
        api.resolve_file(str(_write(tmp_path, doc)))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(GOOD)[1:]
OUTSIDE_PODS = [p for p in PATHS if "template" not in p]


@st.composite
def manifests(draw: st.DrawFn) -> tuple[Any, bool]:
    """GOOD with a few fields replaced by anything, or given an unknown key; and whether a
    mutation fell inside a pod template, which pdserve passes through as written (the
    renderer does not check a PodSpec, the API server does: such objects are not held to
    the schema here)."""
    doc = copy.deepcopy(GOOD)
    in_pod = False
    for _ in range(draw(st.integers(1, 3))):
        # outside the pod templates half the time (most of GOOD's fields are inside them)
        path = draw(st.sampled_from(PATHS) | st.sampled_from(OUTSIDE_PODS))
        in_pod = in_pod or "template" in path
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
            else:
                parent[path[-1]] = draw(values)
        except (KeyError, IndexError, TypeError):  # an earlier mutation replaced the parent
            continue
    return doc, in_pod


def _write(tmp: Path, doc: Any) -> Path:
    path = tmp / "svc.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _problems_are_lines(err: api.ManifestError) -> None:
    assert err.problems, "a ManifestError names at least one problem"
    for line in err.problems:
        assert isinstance(line, str) and line and "\n" not in line, line
        assert "Traceback" not in line, line


def test_unknown_key_with_a_newline_stays_on_one_line(tmp_path) -> None:
    """Found by the property below: the key was printed as is, so its problem took two lines."""
    doc = {**copy.deepcopy(GOOD), "a\nb": 1}
    try:
        api.resolve_file(str(_write(tmp_path, doc)))
    except api.ManifestError as err:
        assert err.problems == [f"{tmp_path / 'svc.yaml'}: 'a\\nb': unknown field"]
    else:
        raise AssertionError("accepted")


@FUZZ
@example(case=(GOOD, False))
@given(case=manifests())
def test_mutated_manifest_resolves_and_renders_or_is_refused(tmp_path_factory, case) -> None:
    doc, in_pod = case
    path = _write(tmp_path_factory.mktemp("fuzz"), doc)
    try:
        services = api.resolve_file(str(path))
    except api.ManifestError as err:
        _problems_are_lines(err)
        return
    for service in services:
        objs = render.render(service)
        if not in_pod:
            for obj in objs:
                check_core(obj)  # the core kinds, strictly; CRD kinds need ../shared/reference


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(repr)))
def test_arbitrary_yaml_text_is_refused_in_lines(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "svc.yaml"
    path.write_text(yaml.safe_dump(GOOD) + "\n" + text, encoding="utf-8")
    try:
        api.resolve_file(str(path))
    except api.ManifestError as err:
        _problems_are_lines(err)


@FUZZ
@given(raw=st.binary(max_size=100))
def test_arbitrary_bytes_are_refused_in_lines(tmp_path_factory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "svc.yaml"
    path.write_bytes(raw)
    try:
        api.resolve_file(str(path))
    except api.ManifestError as err:
        _problems_are_lines(err)


@FUZZ
@given(case=manifests())
def test_accepted_v1alpha1_converts_round_trip(case) -> None:
    doc, _ = case
    try:
        checked = dump(check(doc, "svc.yaml"))
        parse(doc, "svc.yaml")
    except api.ManifestError as err:
        _problems_are_lines(err)
        return
    if checked["apiVersion"] != V1ALPHA1:
        return
    up = convert(checked, V1ALPHA2)
    assert up.dropped == []
    up_checked = dump(check(up.doc, "svc.yaml (as v1alpha2)"))
    back = convert(up_checked, V1ALPHA1)
    assert back.dropped == []
    assert dump(check(back.doc, "svc.yaml (back)")) == checked
