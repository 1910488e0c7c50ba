"""The runner's control port answers only requests bearing the run's token."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from pdserve import wire
from pdserve.errors import UserError
from pdserve.runner import control
from pdserve.runner.service import LocalService


@dataclass
class FakeState:
    path: Path


@dataclass
class FakeService:
    """What the control server uses of a LocalService."""

    state: FakeState
    scaled: list[tuple[str, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"pools": {"decode": 1}}

    def scale(self, pool: str, replicas: int, step: Callable[[str], None]) -> None:
        self.scaled.append((pool, replicas))
        step(f"{pool} -> {replicas}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeService, int]]:
    service = FakeService(FakeState(tmp_path))
    server = control.serve(cast(LocalService, service))
    yield service, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_token_is_owner_only_and_new_each_run(tmp_path: Path) -> None:
    (tmp_path / control.TOKEN_FILE).write_text("old")
    (tmp_path / control.TOKEN_FILE).chmod(0o644)
    first = control.write_token(tmp_path)
    mode = stat.S_IMODE((tmp_path / control.TOKEN_FILE).stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert control.read_token(tmp_path) == first != control.write_token(tmp_path)
    assert len(first) >= 32


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic x", "Bearer"])
def test_without_the_token_is_a_401_in_vllms_shape(
    served: tuple[FakeService, int], auth: str | None
) -> None:
    service, port = served
    headers = {"authorization": auth} if auth else {}
    url = f"http://127.0.0.1:{port}"
    for resp in (
        httpx.get(f"{url}/status", headers=headers),
        httpx.post(f"{url}/scale", json={"pool": "decode", "replicas": 2}, headers=headers),
    ):
        assert resp.status_code == 401
        error = resp.json()["error"]
        assert error["code"] == 401 and error["type"] == wire.error_type(401)
        assert error["param"] is None and "token" in error["message"]
    assert service.scaled == []


def test_with_the_token_scales(served: tuple[FakeService, int], tmp_path: Path) -> None:
    service, port = served
    token = control.read_token(tmp_path)
    out = control.request(port, "POST", "/scale", {"pool": "decode", "replicas": 2}, token=token)
    assert out["steps"] == ["decode -> 2"] and service.scaled == [("decode", 2)]
    assert control.request(port, "GET", "/status", token=token) == {"pools": {"decode": 1}}
    with pytest.raises(RuntimeError, match="control token"):
        control.request(port, "GET", "/status", token="guess")


def test_a_missing_token_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="control token"):
        control.read_token(tmp_path)
