"""examples/profiles: each loads, holds together against its model's and GPU's published
facts, leaves the sim engine a host arena it can allocate, and runs `pdserve simulate`.

The constants restate what the files' sources give (the files' comments cite them); the
tests only relate profile keys to these, never read the comments' numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from pdserve.engines.sim.profile import Profile, load_profile
from pdserve.simulate.cli import main as simulate
from testkit import REPO

PROFILES = REPO / "examples" / "profiles"


@dataclass(frozen=True)
class Model:
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes: int
    params: int

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * 2  # K and V, 2 bytes (bf16)


@dataclass(frozen=True)
class Gpu:
    memory_bytes: float
    bandwidth: float  # bytes/s
    bf16_flops: float  # dense
    nic_bytes_per_s: float  # one NIC per GPU, line rate


# Llama 3.1 config.json (huggingface.co/meta-llama/Llama-3.1-8B and -70B); parameter counts
# from the models' params.json as thamada/modelQuery tabulates them.
LLAMA_8B = Model(32, 8, 128, 16_060_522_496, 8_030_261_248)
LLAMA_70B = Model(80, 8, 128, 141_125_877_760, 70_562_938_880)
# NVIDIA datasheets (H100 SXM, H200 SXM, A100 40GB SXM4; DGX H100/H200 and DGX A100 NICs).
H100 = Gpu(80e9, 3.35e12, 989e12, 400e9 / 8)
H200 = Gpu(141e9, 4.8e12, 989e12, 400e9 / 8)
A100_40G = Gpu(40e9, 1.555e12, 312e12, 200e9 / 8)
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
MAX_ARENA_BYTES = 256 * 2**20  # what `up --engine sim` may allocate per engine for real KV bytes

# file stem -> (model, GPU, tensor-parallel size)
EXPECTED = {
    "llama-3.1-8b-h100": (LLAMA_8B, H100, 1),
    "llama-3.1-8b-h200": (LLAMA_8B, H200, 1),
    "llama-3.1-8b-a100-40g": (LLAMA_8B, A100_40G, 1),
    "llama-3.1-70b-tp4-h100": (LLAMA_70B, H100, 4),
}


def files() -> list[Path]:
    return sorted(PROFILES.glob("*.yaml"))


def test_every_file_is_described_here_and_in_the_readme() -> None:
    assert {f.stem for f in files()} == set(EXPECTED)
    readme = (PROFILES / "README.md").read_text()
    for f in files():
        assert f.name in readme


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_every_key_is_given_with_its_source(path: Path) -> None:
    load_profile(path)
    keys = {f.name for f in fields(Profile)}
    given = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(\w+):\s*[^#\s]+\s+#\s*(\S.*)$", line)
        if m:
            given[m.group(1)] = m.group(2)
    assert set(given) == keys  # no key left to the defaults, none without a comment


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_numbers_hold_together(path: Path) -> None:
    p = load_profile(path)
    model, gpu, tp = EXPECTED[path.stem]
    # The KV cache fits in what vLLM leaves after the weights.
    free = GPU_MEMORY_UTILIZATION * gpu.memory_bytes * tp - model.weight_bytes
    kv = p.num_blocks * p.block_size * model.kv_bytes_per_token
    assert 0.8 * free <= kv <= free  # less a few GB of activations and CUDA graphs
    assert p.max_model_len <= p.num_blocks * p.block_size
    # A decode step reads every weight once; each context token's KV once.
    weights_ms = model.weight_bytes / (tp * gpu.bandwidth) * 1000
    assert weights_ms <= p.decode_base_ms <= 3 * weights_ms
    kv_ms = model.kv_bytes_per_token / (tp * gpu.bandwidth) * 1000
    assert kv_ms * 0.99 <= p.decode_ms_per_ctx_token <= 2 * kv_ms
    # Prefill cannot beat the dense bf16 peak: 2 FLOPs per parameter per token.
    peak_ms = 2 * model.params / (tp * gpu.bf16_flops) * 1000
    assert peak_ms <= p.prefill_ms_per_token <= 4 * peak_ms
    assert p.prefill_overhead_ms < p.decode_base_ms
    # A pull cannot beat the NICs' line rate (one per GPU of the group).
    line_ms = model.kv_bytes_per_token / (tp * gpu.nic_bytes_per_s) * 1000
    assert line_ms <= p.kv_pull_ms_per_token <= 2 * line_ms
    # The bytes the sim engine really copies are not the model's: its arena stays small.
    assert p.kv_bytes_per_token < model.kv_bytes_per_token
    assert p.num_blocks * p.block_bytes <= MAX_ARENA_BYTES


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_simulate_runs_with_it(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "simulate",
        str(REPO / "examples" / "pd-smollm2.yaml"),
        "--workload",
        str(REPO / "examples" / "workloads" / "chat.yaml"),
        "--profile",
        str(path),
        "--requests",
        "50",
    ]
    assert simulate(argv) == 0
    out = capsys.readouterr().out
    assert "ttft_ms" in out and "errors   none" in out
