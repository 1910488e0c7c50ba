"""Where vLLM lives: its own virtual environment, made by `make engines`.

vLLM pins its own torch and transformers, which clash with pdserve's, so the
engines run under another interpreter. Looked up in PDSERVE_ENGINES_VENV, then
else beside pdserve's own venv, then at the root of a source checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pdserve.errors import UserError

VENV_NAME = ".venv-engines"
INSTALL_HINT = "vLLM engines are not installed: run `make engines` (or pass --engine sim)"


def candidates() -> list[Path]:
    if env := os.environ.get("PDSERVE_ENGINES_VENV"):
        return [Path(env)]  # explicit: no fallback, so a wrong path is reported as missing
    found: list[Path] = []
    found.append(Path(sys.prefix).parent / VENV_NAME)
    found.append(Path(__file__).resolve().parents[3] / VENV_NAME)  # src/pdserve/engines
    return found


def find() -> Path | None:
    """The engines venv when vLLM is installed there (the Makefile's marker file)."""
    for venv in candidates():
        if (venv / "bin" / "python").exists() and (venv / ".installed").exists():
            return venv
    return None


def engines_python() -> Path:
    venv = find()
    if venv is None:
        raise UserError(INSTALL_HINT)
    return venv / "bin" / "python"
