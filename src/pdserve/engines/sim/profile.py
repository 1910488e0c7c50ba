"""The engine's performance envelope, loaded from YAML.

Example (every key optional; these are the defaults):

    prefill_ms_per_token: 0.05     # cost of each prompt token not found in the prefix cache
    prefill_overhead_ms: 2.0       # fixed cost of a step that runs any prefill
    decode_base_ms: 8.0            # cost of a decode step for a batch of one
    decode_ms_per_seq: 0.08        # extra cost per sequence in the decode batch
    decode_ms_per_ctx_token: 0.00004  # KV read per context token of the decode batch
    shared_step_ms: 0.0            # fixed cost a step that prefills and decodes pays once
    max_num_seqs: 64               # running requests (vLLM --max-num-seqs)
    max_num_batched_tokens: 8192   # tokens run per step, prefill chunks and decodes together
    num_blocks: 4096               # KV capacity in blocks
    block_size: 16                 # tokens per block (vLLM --block-size)
    max_model_len: 8192            # context limit (vLLM --max-model-len)
    kv_bytes_per_token: 256        # bytes really moved per token in a P/D pull (0: ids only)
    kv_pull_overhead_ms: 1.0       # modelled fixed cost of a P/D pull
    kv_pull_ms_per_token: 0.005    # modelled cost per pulled token (128 KiB/token at ~25 GB/s)

The defaults approximate an 8B model in 16-bit on one H100-class GPU: ~20k prefill tokens/s;
a decode step reads the weights (~8 ms, ~120 tokens/s per stream at batch one) plus the
batch's KV (128 KiB per context token at ~3 TB/s), so long contexts and big batches slow it.
`zero()` is the same envelope with no time cost, for measuring the server itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from pdserve.errors import UserError


@dataclass(frozen=True)
class Profile:
    prefill_ms_per_token: float = 0.05
    prefill_overhead_ms: float = 2.0
    decode_base_ms: float = 8.0
    decode_ms_per_seq: float = 0.08
    decode_ms_per_ctx_token: float = 0.00004
    shared_step_ms: float = 0.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    num_blocks: int = 4096
    block_size: int = 16
    max_model_len: int = 8192
    kv_bytes_per_token: int = 256
    kv_pull_overhead_ms: float = 1.0
    kv_pull_ms_per_token: float = 0.005

    def prefill_seconds(self, uncached_tokens: int) -> float:
        if uncached_tokens <= 0:
            return 0.0
        return (self.prefill_overhead_ms + self.prefill_ms_per_token * uncached_tokens) / 1000

    def decode_seconds(self, batch: int, context_tokens: int = 0) -> float:
        """One decode step for `batch` sequences holding `context_tokens` of KV in all."""
        if batch <= 0:
            return 0.0
        return (
            self.decode_base_ms
            + self.decode_ms_per_seq * batch
            + self.decode_ms_per_ctx_token * context_tokens
        ) / 1000

    def step_seconds(self, prefill_tokens: int, batch: int, context_tokens: int = 0) -> float:
        """One iteration: its prefill tokens and its decode batch. A step doing both is one
        forward pass, whose fixed cost both overheads hold: `shared_step_ms` of it (at most
        the smaller overhead) is paid once, not twice. At 0, as for a GPU's small
        overheads, the two costs simply add."""
        seconds = self.prefill_seconds(prefill_tokens) + self.decode_seconds(batch, context_tokens)
        if self.shared_step_ms and prefill_tokens > 0 and batch > 0:
            shared = min(self.shared_step_ms, self.prefill_overhead_ms, self.decode_base_ms)
            seconds -= shared / 1000
        return seconds

    def kv_pull_seconds(self, tokens: int) -> float:
        """Modelled time to pull `tokens` of KV; the real bytes moved are far fewer, so the
        engine waits out the difference when the real copy was faster."""
        if tokens <= 0:
            return 0.0
        return (self.kv_pull_overhead_ms + self.kv_pull_ms_per_token * tokens) / 1000

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.kv_bytes_per_token

    def zero(self) -> Profile:
        return replace(
            self,
            prefill_ms_per_token=0,
            prefill_overhead_ms=0,
            decode_base_ms=0,
            decode_ms_per_seq=0,
            decode_ms_per_ctx_token=0,
            shared_step_ms=0,
            kv_pull_overhead_ms=0,
            kv_pull_ms_per_token=0,
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def load_profile(path: str | Path | None, **overrides: float | int | None) -> Profile:
    """Read a profile file, then apply CLI overrides (None means not given)."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"--profile {path}: {err}") from err
        if not isinstance(loaded, dict):
            raise UserError(f"--profile {path}: expected a mapping of profile keys")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f.type for f in fields(Profile)}
    for key, value in data.items():
        if key not in known:
            raise UserError(f"profile: unknown key {key!r} (known: {', '.join(known)})")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise UserError(f"profile: {key}: must be a non-negative number, got {value!r}")
    profile = Profile(**data)  # type: ignore[arg-type]
    if profile.block_size < 1 or profile.num_blocks < 1 or profile.max_num_seqs < 1:
        raise UserError("profile: block_size, num_blocks and max_num_seqs must be >= 1")
    return profile
