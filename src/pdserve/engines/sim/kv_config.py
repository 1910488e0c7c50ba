"""--kv-transfer-config as the sim engine reads it: vLLM's keys where vLLM has them
(kv_load_failure_policy; VLLM_NIXL_ABORT_REQUEST_TIMEOUT from the environment), the sim's
own under kv_connector_extra_config. Errors name the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdserve.errors import UserError


@dataclass(frozen=True)
class KVConfig:
    """The parts of vLLM's --kv-transfer-config (and NIXL env) this engine acts on."""

    policy: str = "recompute"  # kv_load_failure_policy: recompute | fail
    transport: str = "nixl"  # kv_connector_extra_config.transport: nixl (if loadable) | tcp
    pull_timeout: float = 30.0  # kv_connector_extra_config.pull_timeout, seconds
    lease_seconds: float = 480.0  # env VLLM_NIXL_ABORT_REQUEST_TIMEOUT
    fault: str | None = None  # kv_connector_extra_config.fault: corrupt | stall (chaos tests)

    @classmethod
    def parse(cls, cfg: dict[str, Any] | None, env: Mapping[str, str]) -> KVConfig:
        cfg = cfg or {}
        extra = cfg.get("kv_connector_extra_config") or {}
        if not isinstance(extra, dict):
            raise UserError("--kv-transfer-config: kv_connector_extra_config must be an object")
        out = cls(
            policy=str(cfg.get("kv_load_failure_policy", "recompute")),
            transport=str(extra.get("transport", "nixl")),
            pull_timeout=_seconds(
                "kv_connector_extra_config.pull_timeout", extra.get("pull_timeout"), 30.0
            ),
            lease_seconds=_seconds(
                "VLLM_NIXL_ABORT_REQUEST_TIMEOUT", env.get("VLLM_NIXL_ABORT_REQUEST_TIMEOUT"), 480.0
            ),
            fault=extra.get("fault"),
        )
        for name, value, allowed in (
            ("kv_load_failure_policy", out.policy, ("recompute", "fail")),
            ("kv_connector_extra_config.transport", out.transport, ("nixl", "tcp")),
            ("kv_connector_extra_config.fault", out.fault, (None, "corrupt", "stall")),
        ):
            if value not in allowed:
                raise UserError(
                    f"--kv-transfer-config: {name} {value!r}: expected one of {allowed}"
                )
        return out


def _seconds(name: str, raw: Any, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected seconds, got {raw!r}") from None
    if value <= 0:
        raise UserError(f"{name}: must be positive, got {raw!r}")
    return value
