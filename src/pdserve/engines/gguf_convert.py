"""Turn a GGUF checkpoint into an HF folder that vLLM can serve.

Runs as a plain script under the engines venv's python (it has transformers,
gguf and torch; pdserve's own venv does not need torch). It dequantises on
load, so the quantizer is dropped before saving: the folder holds bf16
weights, the config without quantization_config, and the tokenizer with its
chat template. Each stage is printed as one JSON line for the caller's
progress display.

usage: python gguf_convert.py GGUF_FILE OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stage(name: str) -> None:
    print(json.dumps({"stage": name}), flush=True)


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage("loading tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    stage("dequantising weights")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    stage("writing HF folder")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stage("done")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
