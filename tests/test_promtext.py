"""A few metrics read from a Prometheus text page: values, not timestamps; odd lines skipped."""

from __future__ import annotations

from pdserve import promtext

PAGE = """\
# HELP vllm:num_requests_running Requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0 1700000000000
vllm:num_requests_running{engine="1",model_name="m"} 1
vllm:num_requests_running_by_reason{reason="x"} 40
vllm:num_requests_waiting{model_name="m"} NaN
vllm:num_requests_waiting{model_name="m" 5
inference_pool_ready_pods 3 1700000000000
"""


def test_a_timestamped_sample_reads_as_its_value() -> None:
    assert promtext.total(PAGE, "inference_pool_ready_pods") == 3
    assert promtext.total(PAGE, "vllm:num_requests_running") == 3  # not ..._by_reason


def test_malformed_and_non_finite_samples_are_skipped() -> None:
    assert promtext.total(PAGE, "vllm:num_requests_waiting") is None
    assert promtext.total(PAGE, "vllm:absent") is None


def test_samples_keep_labels_in_page_order() -> None:
    running = promtext.samples(PAGE, {"vllm:num_requests_running"})
    got = [(s.labels["engine"], s.value) for s in running]
    assert got == [("0", 2.0), ("1", 1.0)]


def test_a_garbled_line_is_skipped_whatever_the_parser_raises() -> None:
    garbled = "vllm:x{=, \t=nI-+f}a\nvllm:x 1\n"  # the first raises IndexError in the parser
    assert promtext.total(garbled, "vllm:x") == 1
