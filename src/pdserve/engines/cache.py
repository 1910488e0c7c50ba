"""pdserve's persistent cache folder (`~/.cache/pdserve`): converted models, and the
compile caches of whatever runs torch for us (vLLM engines, the GGUF converter).

torch inductor's default cache is TMPDIR/torchinductor_USER. The runner's children get a
TMPDIR of their own that `down` removes, so there every start compiled again, and a cold
machine left `torchinductor_root` behind; here a second `up` reuses the compiled graphs.
"""

from __future__ import annotations

import os
from pathlib import Path

# The variable that moves each compile cache, and its folder under compile/.
COMPILE_CACHES = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor", "VLLM_CACHE_ROOT": "vllm"}


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pdserve"


def compile_cache_env() -> dict[str, str]:
    """Where a torch process keeps what it compiles; a variable the user set wins."""
    root = cache_home() / "compile"
    return {var: os.environ.get(var, str(root / sub)) for var, sub in COMPILE_CACHES.items()}
