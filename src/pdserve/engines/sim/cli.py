"""`pdserve sim-engine`: takes vLLM's serve arguments, so a manifest's engine args work as is."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal

from pdserve.errors import UserError
from pdserve.logs import event, setup

# vLLM arguments that change behaviour here; any other vLLM flag is accepted and ignored.
_PROFILE_FLAGS = {
    "--max-model-len": "max_model_len",
    "--block-size": "block_size",
    "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pdserve sim-engine",
        description="A simulated vLLM engine (OpenAI API, P/D, KV events).",
    )
    ap.add_argument("model_tag", nargs="?", help="model path, as `vllm serve MODEL` takes it")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", help="a model folder: use its tokenizer and chat template")
    ap.add_argument("--served-model-name", nargs="+", help="the name clients ask for")
    ap.add_argument("--kv-transfer-config", help="vLLM KV connector JSON (NixlConnector)")
    ap.add_argument("--kv-events-config", help="vLLM KV events JSON (zmq publisher)")
    ap.add_argument("--profile", help="YAML timing/capacity profile (see profile.py)")
    ap.add_argument("--zero-cost", action="store_true", help="no modelled compute time")
    ap.add_argument("--log-level", default="info")
    for flag, dest in _PROFILE_FLAGS.items():
        ap.add_argument(flag, dest=dest, type=int)
    return ap


def _json_flag(name: str, text: str | None) -> dict | None:
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
    args, unknown = parser().parse_known_args(argv[1:])
    log = setup("sim-engine", args.log_level)
    from pdserve.engines.sim.kv_events import parse_config
    from pdserve.engines.sim.profile import load_profile

    profile = load_profile(args.profile, **{d: getattr(args, d) for d in _PROFILE_FLAGS.values()})
    if args.zero_cost:
        profile = profile.zero()
    model_dir = args.model or args.model_tag
    names = args.served_model_name or [model_dir or "sim-model"]
    kv_transfer = _json_flag("--kv-transfer-config", args.kv_transfer_config)
    kv_events = parse_config(args.kv_events_config)
    if unknown:
        event(log, "ignored_vllm_args", args=unknown)
    tokenizer = _tokenizer(model_dir if model_dir and os.path.isdir(model_dir) else None)
    if model_dir and not os.path.isdir(model_dir) and args.model:
        raise UserError(f"--model {model_dir}: not a folder")
    from pdserve.engines.sim.server import EngineConfig

    cfg = EngineConfig(
        served_model_name=names[0],
        profile=profile,
        tokenizer=tokenizer,
        model_path=model_dir,
        kv_transfer=kv_transfer,
        kv_events=kv_events,
        side_channel_host=os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "127.0.0.1"),
        side_channel_port=int(os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "0")),
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(cfg, args.host, args.port, log))
    return 0


def _tokenizer(model_dir: str | None):
    from pdserve.engines.sim.tokens import BuiltinTokenizer, HFTokenizer

    return HFTokenizer(model_dir) if model_dir else BuiltinTokenizer()


async def _serve(cfg, host: str, port: int, log: logging.Logger) -> None:
    from aiohttp import web

    from pdserve.engines.sim.server import Api, SimEngine

    engine = SimEngine(cfg)
    await engine.start()
    runner = web.AppRunner(Api(engine).app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    event(
        log,
        "ready",
        host=host,
        port=port,
        model=cfg.served_model_name,
        engine_id=engine.engine_id,
        kv_side_channel=cfg.side_channel_port or None,
        kv_transport="nixl" if engine.nixl else ("tcp" if cfg.kv_transfer else None),
        kv_events=bool(cfg.kv_events),
        profile=cfg.profile.as_dict(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await engine.stop()
