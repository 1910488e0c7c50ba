"""`pdserve sim-engine`: takes vLLM's serve arguments, so a manifest's engine args work as is."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
from typing import TYPE_CHECKING, Any

from pdserve.block_hashes import ALGORITHMS, DEFAULT_ALGORITHM, Scheme, seed_from_env
from pdserve.errors import UserError
from pdserve.logs import event, setup

if TYPE_CHECKING:
    from pdserve.engines.sim.engine import EngineConfig
    from pdserve.tokenization import Tokenizer

# vLLM arguments that change behaviour here; any other vLLM flag is accepted and ignored.
_PROFILE_FLAGS = {
    "--max-model-len": "max_model_len",
    "--block-size": "block_size",
    "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--num-gpu-blocks-override": "num_blocks",
}
# vLLM flags that take no value (vLLM's own switches are --enable-*, --disable-*, --no-*).
_VLLM_SWITCHES = {"--enforce-eager", "--trust-remote-code", "--headless", "--async-scheduling"}


def _token_count(text: str) -> int:
    """vLLM's human-readable token counts: 4096, 4k (4000), 4K (4096), 1.5m, 1G."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip()
    try:
        if t[-1:] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid token count {text!r}") from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pdserve sim-engine",
        usage="%(prog)s [MODEL] [options] [other vLLM serve flags]",
        description="A simulated vLLM engine (OpenAI API, P/D, KV events).",
        epilog="MODEL, as for `vllm serve`, is a model folder (its tokenizer is used). vLLM "
        "flags not listed here are accepted with their values, logged and ignored. Env: "
        "VLLM_NIXL_SIDE_CHANNEL_HOST/PORT (KV side channel), VLLM_NIXL_ABORT_REQUEST_TIMEOUT "
        "(lease seconds).",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", help="a model folder: use its tokenizer and chat template")
    ap.add_argument("--served-model-name", nargs="+", help="the name clients ask for")
    ap.add_argument("--kv-transfer-config", help="vLLM KV connector JSON (NixlConnector)")
    ap.add_argument("--kv-events-config", help="vLLM KV events JSON (zmq publisher)")
    ap.add_argument(
        "--prefix-caching-hash-algo",
        choices=ALGORITHMS,
        default=DEFAULT_ALGORITHM,
        help="block hashing, as vLLM's (NONE_HASH seed: PYTHONHASHSEED, else vLLM's default)",
    )
    ap.add_argument("--profile", help="YAML timing/capacity profile (see profile.py)")
    ap.add_argument("--zero-cost", action="store_true", help="no modelled compute time")
    ap.add_argument(
        "--print-profile", action="store_true", help="print the effective profile (YAML), exit"
    )
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (as vLLM)")
    ap.add_argument("--ssl-keyfile", help="the certificate's key")
    ap.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vLLM's prefix caching switch (on by default, as in vLLM V1)",
    )
    ap.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    ap.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--lora-modules", nargs="+", default=[], help="name=path or vLLM's JSON form")
    ap.add_argument("--max-loras", type=int, default=1)
    ap.add_argument(
        "--max-kv-leases",
        type=int,
        default=256,
        help="sim only: P/D prefills (kv_transfer_params do_remote_decode) that may hold or "
        "await a KV lease at once; past it, and when leased blocks leave too few for a "
        "prompt, a prefill is a quick 503 instead of a wait (default 256; 0: no bound)",
    )
    for flag, dest in _PROFILE_FLAGS.items():
        ap.add_argument(flag, dest=dest, type=_token_count)
    return ap


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse like `vllm serve [MODEL] ...`, setting aside the vLLM flags not modelled here.

    argparse alone would take the value of an unknown `--flag value` as the positional
    model, so unknown flags are split off first: `--flag=v`, a switch, or `--flag v`.
    """
    ap = parser()
    known = ap._option_string_actions
    model_tag = None
    rest = list(argv)
    if rest and not rest[0].startswith("-"):
        model_tag = rest.pop(0)
    mine: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        name = arg.split("=", 1)[0]
        target = mine if name in known else ignored
        target.append(arg)
        i += 1
        takes_value = known[name].nargs != 0 if name in known else _takes_value(name)
        if "=" not in arg and takes_value:
            while i < len(rest) and not rest[i].startswith("--"):
                target.append(rest[i])
                i += 1
                if name not in known or known[name].nargs != "+":
                    break
    args = ap.parse_args(mine)
    args.model_tag = model_tag
    return args, ignored


def _takes_value(flag: str) -> bool:
    if flag in _VLLM_SWITCHES or not flag.startswith("--"):
        return False  # single-dash forms such as -O3 carry their value
    return not flag.startswith(("--enable-", "--disable-", "--no-"))


def profile_overrides(args: argparse.Namespace) -> dict[str, int | None]:
    """The profile keys the vLLM flags set (None: not given), for `load_profile`; the
    simulator reads a manifest's engine args through this too, so both agree on them."""
    return {dest: getattr(args, dest) for dest in _PROFILE_FLAGS.values()}


def _json_flag(name: str, text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{name}: invalid JSON: {err}") from err
    if not isinstance(value, dict):
        raise UserError(f"{name}: expected a JSON object")
    return value


def main(argv: list[str]) -> int:
    args, unknown = parse_args(argv[1:])
    log = setup("sim-engine", args.log_level)
    from pdserve.engines.sim.kv_events import enabled_config
    from pdserve.engines.sim.profile import load_profile

    profile = load_profile(args.profile, **profile_overrides(args))
    if args.zero_cost:
        profile = profile.zero()
    if args.print_profile:
        import yaml

        print(yaml.safe_dump(profile.as_dict(), sort_keys=False), end="")
        return 0
    model_dir = args.model or args.model_tag
    names = args.served_model_name or [model_dir or "sim-model"]
    kv_transfer = _json_flag("--kv-transfer-config", args.kv_transfer_config)
    kv_events = enabled_config(_json_flag("--kv-events-config", args.kv_events_config))
    if unknown:
        event(log, "ignored_vllm_args", args=unknown)
    if args.model and not os.path.isdir(args.model):
        raise UserError(f"--model {args.model}: not a folder")
    tokenizer = _tokenizer(model_dir if model_dir and os.path.isdir(model_dir) else None)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise UserError("--ssl-certfile and --ssl-keyfile go together")
    from pdserve.engines.sim.engine import EngineConfig

    cfg = EngineConfig(
        served_model_name=names[0],
        aliases=tuple(names[1:]),
        enable_prefix_caching=args.enable_prefix_caching,
        tp_size=args.tensor_parallel_size,
        lora_modules=_lora_modules(args.lora_modules, args.enable_lora),
        max_loras=args.max_loras,
        max_kv_leases=_non_negative("--max-kv-leases", args.max_kv_leases),
        profile=profile,
        tokenizer=tokenizer,
        model_path=model_dir,
        kv_transfer=kv_transfer,
        kv_events=kv_events,
        hash_scheme=Scheme(
            args.prefix_caching_hash_algo, seed_from_env(args.prefix_caching_hash_algo)
        ),
        side_channel_host=os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "127.0.0.1"),
        side_channel_port=_env_port("VLLM_NIXL_SIDE_CHANNEL_PORT"),
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    tls = _ssl_context(args.ssl_certfile, args.ssl_keyfile)
    asyncio.run(_serve(cfg, args.host, args.port, log, tls))
    return 0


def _lora_modules(specs: list[str], enabled: bool) -> tuple[tuple[str, str], ...]:
    """`name=path` or `{"name": ..., "path": ...}` per adapter, as vLLM takes them."""
    if specs and not enabled:
        raise UserError("--lora-modules needs --enable-lora")
    out: list[tuple[str, str]] = []
    for spec in specs:
        if spec.lstrip().startswith("{"):
            item = _json_flag("--lora-modules", spec) or {}
            name, path = item.get("name"), item.get("path")
        else:
            name, _, path = spec.partition("=")
        if not name or not path:
            raise UserError(f"--lora-modules {spec!r}: expected name=path")
        out.append((str(name), str(path)))
    return tuple(out)


def _non_negative(flag: str, value: int) -> int:
    if value < 0:
        raise UserError(f"{flag} {value}: must be 0 (no bound) or more")
    return value


def _env_port(name: str) -> int:
    text = os.environ.get(name, "0") or "0"
    if not text.isdigit() or int(text) > 65535:
        raise UserError(f"{name}={text!r}: expected a port number")
    return int(text)


def _tokenizer(model_dir: str | None) -> Tokenizer:
    from pdserve.tokenization import BuiltinTokenizer, HFTokenizer

    if not model_dir:
        return BuiltinTokenizer()
    try:
        return HFTokenizer(model_dir)
    except (OSError, ValueError) as err:
        raise UserError(f"model {model_dir}: cannot load its tokenizer: {err}") from err


def _ssl_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if not certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as err:
        raise UserError(f"--ssl-certfile/--ssl-keyfile: {err}") from err
    return ctx


async def _serve(
    cfg: EngineConfig,
    host: str,
    port: int,
    log: logging.Logger,
    tls: ssl.SSLContext | None = None,
) -> None:
    from aiohttp import web

    from pdserve.engines.sim.engine import SimEngine
    from pdserve.engines.sim.server import Api

    engine = SimEngine(cfg)
    try:
        await engine.start()
    except OSError as err:
        where = f"{cfg.side_channel_host}:{cfg.side_channel_port}"
        raise UserError(f"cannot listen on KV side channel {where}: {err.strerror}") from err
    # handler_cancellation: a client that goes away aborts its request, streamed or not, as
    # vLLM does.
    runner = web.AppRunner(Api(engine).app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024, ssl_context=tls).start()
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    event(
        log,
        "ready",
        host=host,
        port=port,
        tls=tls is not None,
        model=cfg.served_model_name,
        engine_id=engine.engine_id,
        kv_side_channel=cfg.side_channel_port or None,
        kv_transport="nixl" if engine.nixl else ("tcp" if cfg.kv_transfer else None),
        kv_events=bool(cfg.kv_events),
        max_kv_leases=cfg.max_kv_leases if cfg.kv_transfer else None,
        profile=cfg.profile.as_dict(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await engine.stop()
