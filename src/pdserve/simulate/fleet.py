"""What a manifest runs, as the simulator needs it: engines by role with their profiles, the
EPP config, and the tokenizer. Read through the same code `pdserve up` uses (load_plan, the
sim engine's argument parser), so a manifest's `--max-num-seqs` means the same here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdserve.block_hashes import Scheme, seed_from_env
from pdserve.engines import model as models
from pdserve.engines import vllm
from pdserve.engines.sim.cli import parse_args, profile_overrides
from pdserve.engines.sim.profile import Profile, load_profile
from pdserve.epp import config as epp_config
from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.runner import components
from pdserve.runner.components import KVFeed
from pdserve.runner.manifest import load_plan
from pdserve.runner.plan import Plan, Pool
from pdserve.simulate.tensor import tensor_parallel
from pdserve.simulate.tokens import fast
from pdserve.tokenization import BuiltinTokenizer, HFTokenizer, Tokenizer
from pdserve.wire import ROLE_PREFILL


@dataclass(frozen=True)
class PoolSpec:
    role: str
    replicas: int
    profile: Profile  # of one replica: its TP group's envelope
    prefix_caching: bool
    scheme: Scheme
    max_loras: int


@dataclass(frozen=True)
class Fleet:
    plan: Plan
    pools: tuple[PoolSpec, ...]  # prefill first, as `up` starts them
    epp: epp_config.Config
    tokenizer: Tokenizer
    tokenizer_dir: Path | None
    # The config's precise-prefix producer, which the engines' KV events feed; else None.
    events_to: PrecisePrefixProducer | None = None

    @property
    def engines(self) -> int:
        return sum(p.replicas for p in self.pools)


def load_fleet(
    path: Path,
    profile_path: str | None = None,
    tokenizer: Tokenizer | None = None,
    prefill_profile_path: str | None = None,
) -> Fleet:
    """UserError (one line) for a manifest `validate` refuses or a bad profile. `tokenizer`:
    one already loaded for this manifest's model (a planner simulating many layouts of one
    model would otherwise spend most of each run loading it again). `prefill_profile_path`:
    the prefill pool's own envelope (its engines may differ from the decode pool's: other
    hardware, or a KV connector's cost measured on them), else `profile_path`'s."""
    plan = load_plan(path)
    folder = _tokenizer_dir(plan.model_uri)
    # As `up`: a precise-prefix config makes the engines hash and block as its producer.
    feed = components.kv_feed(plan.scheduler_config, 0, "sim")
    text = plan.scheduler_config
    if feed is not None:
        text = components.localize_epp_config(text, feed.port, folder)
    config = epp_config.load(text, "scheduler config", allow_experimental=True)
    pools = [_pool(plan, plan.decode, profile_path, feed)]
    if plan.prefill is not None:
        pools.insert(0, _pool(plan, plan.prefill, prefill_profile_path or profile_path, feed))
    if tokenizer is None:
        tokenizer = fast(HFTokenizer(folder), folder) if folder else BuiltinTokenizer()
    producer = next(
        (p for p in config.plugins.values() if isinstance(p, PrecisePrefixProducer)), None
    )
    return Fleet(plan, tuple(pools), config, tokenizer, folder, producer)


def _pool(plan: Plan, pool: Pool, profile_path: str | None, feed: KVFeed | None) -> PoolSpec:
    """The engine args `up` would give `pdserve sim-engine` for this pool, parsed by it."""
    argv = vllm.manifest_args(pool.args)
    if feed is not None:
        argv += feed.engine_args(pool.role, plan.served_name, pool.args)
    args, _ = parse_args(argv)
    profile = load_profile(profile_path or args.profile, **profile_overrides(args))
    # The manifest's parallelism.tensor, or a --tensor-parallel-size in the args given.
    profile = tensor_parallel(profile, max(pool.tensor, args.tensor_parallel_size))
    algo = args.prefix_caching_hash_algo
    seed = feed.seed if feed is not None else seed_from_env(algo)
    return PoolSpec(
        role=pool.role,
        replicas=pool.replicas,
        profile=profile,
        prefix_caching=args.enable_prefix_caching,
        scheme=Scheme(algo, seed),
        max_loras=args.max_loras,
    )


def _tokenizer_dir(uri: str) -> Path | None:
    """The folder whose tokenizer the sim engines of `up --engine sim` would load: a local
    model folder, or the cached copy of a builtin:// or hf:// model (else the built-in one)."""
    if models.is_local(uri):
        local = Path(uri.removeprefix("file://"))
        return local if (local / "config.json").is_file() else None
    return models.cached(uri)


def is_prefill(spec: PoolSpec) -> bool:
    return spec.role == ROLE_PREFILL
