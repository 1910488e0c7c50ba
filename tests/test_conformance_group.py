"""The conformance group: run beside ../shared/reference, reported when it is missing, and a
failure then under CI=true. Checked on a copy of tests/conftest.py and tests/testkit.py in a
folder whose parent has no `shared`, as a plain clone would be."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).parent
SUITE = """\
import pytest

def test_core():
    pass

@pytest.mark.conformance
@pytest.mark.parametrize("n", [1, 2])
def test_upstream(n):
    pass
"""


@pytest.fixture
def clone(pytester: pytest.Pytester) -> Path:
    """A repository layout: clone/pyproject.toml, clone/tests/{conftest,testkit,test_x}.py."""
    root = pytester.path / "clone"
    (root / "tests").mkdir(parents=True)
    for name in ("conftest.py", "testkit.py"):
        shutil.copy(TESTS / name, root / "tests" / name)
    (root / "tests" / "test_x.py").write_text(SUITE)
    (root / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nmarkers = ["conformance: upstream files"]\n'
    )
    pytester.chdir()
    return root


def _run(
    pytester: pytest.Pytester, clone: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess(str(clone / "tests"), "-p", "no:cacheprovider")


def test_missing_reference_leaves_the_group_out_with_one_line(
    pytester: pytest.Pytester, clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, clone, monkeypatch, None)
    assert result.ret == 0
    result.assert_outcomes(passed=1, deselected=2)
    missing = clone.parent / "shared" / "reference"
    lines = [line for line in result.outlines if "conformance" in line]
    assert lines == [
        f"conformance group (2 tests) did not run: {missing} is missing (upstream files, "
        "../shared beside the repository); with CI=true this fails the run",
        "conformance: 0 tests ran",
    ]


def test_missing_reference_under_ci_fails_the_run(
    pytester: pytest.Pytester, clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, clone, monkeypatch, "true")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    missing = clone.parent / "shared" / "reference"
    assert [line for line in result.errlines if "conformance" in line] == [
        f"ERROR: conformance group (2 tests) did not run: {missing} is missing (upstream "
        "files, ../shared beside the repository), and CI=true requires it"
    ]


def test_present_reference_runs_the_group(
    pytester: pytest.Pytester, clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clone.parent / "shared" / "reference").mkdir(parents=True)
    result = _run(pytester, clone, monkeypatch, "true")
    assert result.ret == 0
    result.assert_outcomes(passed=3)
    assert [line for line in result.outlines if "conformance" in line] == [
        "conformance: 2 tests ran"
    ]
