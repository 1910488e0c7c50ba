"""The `pdserve` command: a thin dispatcher.

Each subcommand lives with its component and is imported only when run, so
`pdserve render` does not pay for grpc, aiohttp or transformers at start-up.
A component's module exposes `main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import importlib
import sys

from pdserve.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("pdserve.api.cli", "check LLMInferenceService manifests"),
    "convert": ("pdserve.api.cli", "print a manifest converted to v1alpha1 or v1alpha2"),
    "render": ("pdserve.render.cli", "print the Kubernetes child resources of a manifest"),
    "explain": ("pdserve.render.cli", "summarise pools, parallelism and routing of a manifest"),
    "sim-engine": ("pdserve.engines.sim.cli", "run the simulated vLLM-compatible engine"),
    "sidecar": ("pdserve.sidecar.cli", "run the P/D routing sidecar (llm-d compatible)"),
    "epp": ("pdserve.epp.cli", "run the endpoint picker (Envoy ext_proc)"),
    "gateway-config": ("pdserve.epp.cli", "write an Envoy bootstrap that uses the EPP"),
    "up": ("pdserve.runner.cli", "run a manifest on this machine"),
    "status": ("pdserve.runner.cli", "show a running local service"),
    "logs": ("pdserve.runner.cli", "print a component's log"),
    "down": ("pdserve.runner.cli", "stop a local service"),
    "scale": ("pdserve.runner.cli", "resize a pool of a running local service"),
    "operator": ("pdserve.operator.cli", "run the Kubernetes operator for LLMInferenceService"),
    "install": ("pdserve.install.cli", "print the operator install manifests: CRDs, RBAC, ..."),
    "preflight": ("pdserve.install.preflight", "check a cluster has what a manifest needs"),
    "model-job": ("pdserve.render.cli", "print a PVC and a Job that download a manifest's model"),
    "bench": ("pdserve.bench.cli", "measure a running OpenAI-API service under a workload"),
    "profile": ("pdserve.bench.profiling", "measure an engine and write its sim-engine profile"),
    "simulate": ("pdserve.simulate.cli", "simulate a manifest's fleet under a workload"),
    "plan": ("pdserve.plan.cli", "find the cheapest P/D layout that meets SLOs, by simulation"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pdserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from pdserve import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pdserve: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main([name, *rest]) or 0)
    except UserError as err:
        print(f"pdserve {name}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pdserve render ... | head`
        return 0
