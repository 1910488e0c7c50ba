"""vLLM's log lines as the runner configures them read back as the routing trace reads them."""

from __future__ import annotations

import logging
import time

from pdserve.engines import vllm


def test_a_line_in_our_format_parses_back_to_its_time_and_message() -> None:
    record = logging.LogRecord(
        "vllm.x", logging.INFO, "/a/logger.py", 66, "Received request r1", (), None
    )
    record.vllm_process_name, record.fileinfo = "APIServer", "logger.py"
    line = logging.Formatter(vllm.LOG_LINE, vllm.LOG_DATE).format(record)
    item = vllm.parse_log_line(line)
    assert item is not None
    assert abs(item["ts"] - record.created) < 0.001
    assert item["process"] == "APIServer" and item["where"] == "logger.py:66"
    assert (item["level"], item["message"]) == ("info", "Received request r1")
    assert vllm.parse_log_line('INFO:     127.0.0.1:5 - "GET /metrics HTTP/1.1" 200 OK') is None
    assert time.localtime(item["ts"]).tm_year == time.localtime(record.created).tm_year
