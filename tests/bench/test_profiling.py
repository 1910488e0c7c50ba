"""`pdserve profile` against a sim engine whose envelope is known: the written profile
recovers it, and loads where the sim engine and the simulator read profiles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pdserve.bench.profiling import Measured, fit_line, main, profile_of
from pdserve.engines.sim.profile import load_profile
from pdserve.errors import UserError
from testkit import metric

TRUE = {
    "prefill_ms_per_token": 0.05,
    "prefill_overhead_ms": 4.0,
    "decode_base_ms": 12.0,
    "decode_ms_per_seq": 1.5,
    "decode_ms_per_ctx_token": 0.002,
    "num_blocks": 3000,
}


def test_fit_line_and_a_noisy_negative_slope_is_flattened() -> None:
    assert fit_line([(0, 1.0), (10, 3.0), (20, 5.0)]) == pytest.approx((1.0, 0.2))
    m = Measured(prefill=[(10, 5.0), (20, 6.0)], decode=[(1, 10.0), (4, 9.0)],
                 long_context=None, engine={"max_model_len": 4096})  # fmt: skip
    p = profile_of(m)
    assert (p.decode_base_ms, p.decode_ms_per_seq) == (9.5, 0.0)
    assert p.prefill_ms_per_token == pytest.approx(0.1) and p.max_model_len == 4096


def test_profile_recovers_a_sim_engines_envelope(
    tmp_path: Path, bench_engine: Callable[..., str]
) -> None:
    truth = tmp_path / "truth.yaml"
    truth.write_text("".join(f"{k}: {v}\n" for k, v in TRUE.items()))
    url = bench_engine("--profile", str(truth))
    out = tmp_path / "measured.yaml"
    sizes = ["--prompt-tokens", "256,1024,2048", "--batches", "1,4,8", "--long-context", "2048"]
    argv = ["profile", "--url", url, "--model", "sim", "--output", str(out), *sizes]
    argv.append("--additive-steps")  # as the sim engine times a step
    assert main(argv) == 0
    text = out.read_text()
    assert "# measured" in text and "# reported by the engine" in text
    got = load_profile(out)
    # Slopes are the engine's own; intercepts carry the HTTP round trip (a few ms here).
    assert got.prefill_ms_per_token == pytest.approx(TRUE["prefill_ms_per_token"], rel=0.25)
    assert got.decode_ms_per_seq == pytest.approx(TRUE["decode_ms_per_seq"], rel=0.25)
    assert got.decode_base_ms == pytest.approx(TRUE["decode_base_ms"], rel=0.25)
    assert TRUE["prefill_overhead_ms"] <= got.prefill_overhead_ms < TRUE["prefill_overhead_ms"] + 15
    assert got.decode_ms_per_ctx_token == pytest.approx(TRUE["decode_ms_per_ctx_token"], rel=0.5)
    assert got.num_blocks == TRUE["num_blocks"]
    assert got.shared_step_ms == 0


def test_warm_up_requests_are_sent_first_and_not_timed(
    tmp_path: Path, bench_engine: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = bench_engine()
    sizes = ["--prompt-tokens", "32,64", "--batches", "1,3", "--long-context", "0"]
    argv = ["profile", "--url", url, "--model", "sim", "-o", str(tmp_path / "p.yaml"), *sizes]
    assert main([*argv, "--repeats", "1", "--warmup", "2"]) == 0
    timed = 2 + (1 + 3)  # a prefill per prompt length, then each decode batch's streams
    warm = 2 * (2 + 3)  # per round: each prompt length once, the largest batch once
    assert metric(url, "vllm:request_success_total") == timed + warm
    err = capsys.readouterr().err
    assert err.index("warm-up round 2 of 2") < err.index("prefill 32 tokens")


def test_a_one_pass_engine_pays_a_mixed_steps_fixed_cost_once() -> None:
    m = Measured(prefill=[(100, 80.0), (300, 120.0)], decode=[(1, 51.0), (3, 55.0)],
                 long_context=None, engine={})  # fmt: skip
    one, two = profile_of(m), profile_of(m, one_pass=False)
    assert (one.prefill_overhead_ms, one.decode_base_ms) == pytest.approx((60.0, 49.0))
    assert one.shared_step_ms == pytest.approx(49.0) and two.shared_step_ms == 0
    # 100 prompt tokens beside 2 decodes: 60 + 20 and 49 + 4, the 49 of a pass paid once
    assert one.step_seconds(100, 2) == pytest.approx((80 + 53 - 49) / 1000)
    assert two.step_seconds(100, 2) == pytest.approx((80 + 53) / 1000)
    assert one.step_seconds(100, 0) == two.step_seconds(100, 0) == pytest.approx(0.080)
    assert one.step_seconds(0, 2) == two.step_seconds(0, 2) == pytest.approx(0.053)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt-tokens", "64"], "--prompt-tokens: give two lengths"),
        (["--batches", "0,2"], "expected numbers >= 1"),
        (["--batches", "a"], "comma-separated whole numbers"),
        (["--warmup", "-1"], "--warmup: expected a whole number >= 0"),
    ],
)
def test_bad_flags_are_one_line(extra: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        main(["profile", "--url", "http://127.0.0.1:9", "--model", "m", "-o", "x", *extra])


def test_an_engine_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    from pdserve.process import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=r"ConnectError"):
        main(["profile", "--url", url, "--model", "m", "-o", str(tmp_path / "p.yaml")])
