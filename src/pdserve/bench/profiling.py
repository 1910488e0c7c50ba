"""`pdserve profile`: measure a running engine and write its envelope in the sim engine's
profile format, so `pdserve simulate` and the sim engine can stand in for it.

What HTTP can show is measured; the rest is read from the engine or left at the default
with a comment saying so:
- prefill: TTFT of one-token answers at several prompt lengths, one request at a time, the
  lengths in turn; the slope is the cost per token, the intercept the fixed cost (HTTP and
  scheduling included).
- decode: inter-token latency of N concurrent streams at several N (the step time at batch
  N), and at batch one with a long context (the cost of reading the KV).
- capacity: `max_model_len` from /v1/models, block size and KV blocks from vLLM's
  `vllm:cache_config_info` gauge when the engine exports it.
Prompts are token ids, distinct at their first token, so no request hits the prefix cache.
Every shape is first sent `--warmup` times untimed: an engine's first requests pay one-time
costs (vLLM's CPU build, just started: a 32-token prompt's TTFT 65 ms on the first request,
37-43 ms from the third), which a fit through medians of a few repeats takes as the fixed
cost of every prefill.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from pdserve.engines.sim.profile import Profile
from pdserve.errors import UserError
from pdserve.flags import OneLineParser

TOKEN_BASE = 1000  # token ids from here: inside any real vocabulary, past special tokens
CACHE_LABELS = (("block_size", "block_size"), ("num_blocks", "num_gpu_blocks"))


@dataclass
class Measured:
    prefill: list[tuple[int, float]]  # (prompt tokens, TTFT ms)
    decode: list[tuple[int, float]]  # (batch, median inter-token ms)
    long_context: tuple[int, float] | None  # (context tokens, median inter-token ms)
    engine: dict[str, int]  # what the engine reports about itself


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares: (intercept, slope); one x value gives a flat line through its mean."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in points) / var
    return my - slope * mx, slope


def profile_of(m: Measured, base: Profile | None = None, one_pass: bool = True) -> Profile:
    """The measurements as a Profile; costs never negative (noise can tilt a fit).

    `one_pass`: the engine runs a step's prefill chunks and decodes as one forward pass
    (vLLM's mixed batches), so a step doing both pays their common fixed cost once: the
    smaller of the two fitted overheads becomes `shared_step_ms`. A lone request's TTFT
    and a decode step each hold that cost; adding both would count it twice."""
    base = base or Profile()
    overhead, per_token = fit_line([(float(n), ms) for n, ms in m.prefill])
    step0, per_seq = fit_line([(float(b), ms) for b, ms in m.decode])
    if per_seq < 0:  # batching looked free: a flat step at the mean
        step0, per_seq = statistics.fmean(ms for _, ms in m.decode), 0.0
    values: dict[str, Any] = {
        "prefill_ms_per_token": max(per_token, 0.0),
        "prefill_overhead_ms": max(overhead, 0.0),
        "decode_base_ms": max(step0, 0.0),
        "decode_ms_per_seq": per_seq,
    }
    if one_pass:
        values["shared_step_ms"] = min(values["prefill_overhead_ms"], values["decode_base_ms"])
    if m.long_context is not None:
        ctx, ms = m.long_context
        short = min(m.decode)[1]
        values["decode_ms_per_ctx_token"] = max((ms - short) / ctx, 0.0) if ctx else 0.0
    known = {f.name for f in fields(Profile)}
    values.update({k: v for k, v in m.engine.items() if k in known})
    return Profile(**{**base.as_dict(), **values})


def to_yaml(profile: Profile, m: Measured, url: str) -> str:
    """The profile with where each number came from."""
    measured = {"prefill_ms_per_token", "prefill_overhead_ms", "decode_base_ms"}
    measured |= {"decode_ms_per_seq"} | ({"decode_ms_per_ctx_token"} if m.long_context else set())
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    lines = [f"# pdserve profile of {url}, {stamp}"]
    for key, value in profile.as_dict().items():
        if key in measured:
            why = "measured"
        elif key == "shared_step_ms" and value:
            why = "the smaller overhead: one forward pass per step"
        elif key in m.engine:
            why = "reported by the engine"
        else:
            why = "sim engine default: not measurable over HTTP"
        number = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"{key}: {number}  # {why}")
    return "\n".join(lines) + "\n"


class Engine:
    """The engine under measurement: streaming completions over token-id prompts."""

    def __init__(self, url: str, model: str, timeout: float = 120.0) -> None:
        self.url, self.model = url.rstrip("/"), model
        self.http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))
        self.salt = 0

    def prompt(self, tokens: int) -> list[int]:
        self.salt += 1
        return [TOKEN_BASE + self.salt % 20000] + [
            TOKEN_BASE + (i % 997) for i in range(tokens - 1)
        ]

    async def stream(self, tokens: int, max_tokens: int) -> list[float]:
        """Arrival times (perf_counter) of the request's start and of each token."""
        body = {"model": self.model, "prompt": self.prompt(tokens), "max_tokens": max_tokens,
                "stream": True, "ignore_eos": True, "temperature": 0}  # fmt: skip
        times = [time.perf_counter()]
        async with self.http.stream("POST", self.url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")[:200]
                raise UserError(f"{self.url}: completion answered {r.status_code}: {text}")
            async for line in r.aiter_lines():
                if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                    chunk = json.loads(line[5:])
                    if any(c.get("text") for c in chunk.get("choices") or ()):
                        times.append(time.perf_counter())
        return times

    async def reported(self) -> dict[str, int]:
        out: dict[str, int] = {}
        models = (await self.http.get(self.url + "/v1/models")).json().get("data") or []
        lens = [m.get("max_model_len") for m in models if isinstance(m.get("max_model_len"), int)]
        if lens:
            out["max_model_len"] = max(lens)
        metrics = (await self.http.get(self.url + "/metrics")).text
        for line in metrics.splitlines():
            if line.startswith("vllm:cache_config_info{"):
                labels = dict(
                    part.split("=", 1)
                    for part in line[line.index("{") + 1 : line.index("}")].split(",")
                )
                for ours, theirs in (
                    ("block_size", "block_size"),
                    ("num_blocks", "num_gpu_blocks"),
                ):
                    value = labels.get(theirs, "").strip('"')
                    if value.isdigit() and int(value) > 0:
                        out[ours] = int(value)
        return out


async def measure(
    engine: Engine,
    prompts: list[int],
    batches: list[int],
    repeats: int,
    long: int,
    warmup: int = 1,
) -> Measured:
    engine_info = await engine.reported()
    for i in range(warmup):
        _progress(f"warm-up round {i + 1} of {warmup}")
        await _warm(engine, prompts, batches, long)
    # Round-robin over the lengths: a slow spell of the machine then lands on every length
    # alike, not on a few repeats of one, where it would tilt the fitted line.
    ttfts: dict[int, list[float]] = {n: [] for n in prompts}
    for _ in range(repeats):
        for n in prompts:
            times = await engine.stream(n, 1)
            ttfts[n].append((times[1] - times[0]) * 1000)
    prefill = [(n, statistics.median(ttfts[n])) for n in prompts]
    for n, ms in prefill:
        _progress(f"prefill {n} tokens: TTFT {ms:.2f} ms")
    decode = []
    for b in batches:
        runs = await asyncio.gather(*(engine.stream(16, 32) for _ in range(b)))
        decode.append((b, _steady_itl(runs)))
        _progress(f"decode batch {b}: {decode[-1][1]:.2f} ms per token")
    long_context = None
    if long:
        runs = [await engine.stream(long, 32) for _ in range(repeats)]
        long_context = (long, _steady_itl(runs))
        _progress(f"decode at {long} tokens of context: {long_context[1]:.2f} ms per token")
    return Measured(prefill, decode, long_context, engine_info)


async def _warm(engine: Engine, prompts: list[int], batches: list[int], long: int) -> None:
    """One request of each shape `measure` times, the largest batch among them."""
    for n in prompts:
        await engine.stream(n, 1)
    await asyncio.gather(*(engine.stream(16, 32) for _ in range(max(batches))))
    if long:
        await engine.stream(long, 32)


def _steady_itl(runs: list[list[float]]) -> float:
    """Median gap between tokens after each stream's first, when all streams are running."""
    gaps = [b - a for times in runs for a, b in itertools.pairwise(times[2:])]
    if not gaps:
        raise UserError("the engine streamed too few tokens to time its decode steps")
    return statistics.median(gaps) * 1000


def _progress(text: str) -> None:
    print(f"pdserve profile: {text}", file=sys.stderr, flush=True)


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="pdserve profile", description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the engine's base URL, e.g. http://host:8000")
    ap.add_argument("--model", required=True, help="the model name the engine serves")
    ap.add_argument("--output", "-o", required=True, help="profile YAML to write")
    ap.add_argument("--prompt-tokens", type=_counts, default=[64, 256, 1024])
    ap.add_argument("--batches", type=_counts, default=[1, 2, 4, 8])
    ap.add_argument("--long-context", type=int, default=2048, help="0: skip")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of every request shape first"
    )
    ap.add_argument(
        "--additive-steps",
        action="store_true",
        help="the engine times a step's prefill and decode apart (the sim engine), not as "
        "one forward pass (vLLM): no shared_step_ms",
    )
    return ap


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    if len(set(args.prompt_tokens)) < 2:
        raise UserError("--prompt-tokens: give two lengths or more to fit a cost per token")
    if args.warmup < 0:
        raise UserError(f"--warmup: expected a whole number >= 0, got {args.warmup}")

    async def run() -> Measured:
        engine = Engine(args.url, args.model)
        try:
            return await measure(
                engine,
                args.prompt_tokens,
                args.batches,
                args.repeats,
                args.long_context,
                args.warmup,
            )
        except httpx.HTTPError as err:
            raise UserError(f"{args.url}: {type(err).__name__}: {err}") from None
        finally:
            await engine.http.aclose()

    measured = asyncio.run(run())
    profile = profile_of(measured, one_pass=not args.additive_steps)
    try:
        Path(args.output).write_text(to_yaml(profile, measured, args.url))
    except OSError as err:
        raise UserError(f"--output: cannot write {args.output}: {err.strerror}") from None
    print(f"pdserve profile: wrote {args.output}", file=sys.stderr)
    return 0
