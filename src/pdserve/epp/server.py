"""The EPP process: datastore, ext_proc gRPC, gRPC health and Prometheus metrics."""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from pdserve.epp.config import Config
from pdserve.epp.datastore import Datastore
from pdserve.epp.director import Director
from pdserve.epp.extproc import ExtProc
from pdserve.epp.metrics import EppMetrics
from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.epp.scheduler import Scheduler
from pdserve.logs import event

SERVICES = ("", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor")


def kv_event_feeds(config: Config, default: str) -> list[tuple[PrecisePrefixProducer, str]]:
    """Each precise producer in the config (a legacy cache_tracking scorer's own included,
    the loader registers it) and the ZMQ endpoint it subscribes to: its own, else the flag."""
    return [
        (p, p.zmq_endpoint or default)
        for p in config.plugins.values()
        if isinstance(p, PrecisePrefixProducer)
    ]


async def log_index_size(
    producer: PrecisePrefixProducer, interval: float, log: logging.Logger
) -> None:
    """kvBlockIndexConfig.metricsLoggingInterval: the index's size as a log line too, for
    whoever reads logs rather than the inference_extension_prefix_indexer_size gauge."""
    while True:
        await asyncio.sleep(interval)
        event(log, "kv_block_index", producer=producer.name, blocks=producer.size())


async def serve(
    args: argparse.Namespace, config: Config, store: Datastore, log: logging.Logger
) -> None:
    from pdserve.epp.cli import _stop_on_signals

    metrics = EppMetrics()
    director = Director(
        Scheduler(config),
        store,
        metrics,
        args.pool_name,
        args.default_criticality,
        args.inference_objectives,
        args.decision_deadline,
    )
    await store.poll()
    tasks = [asyncio.create_task(store.run())]
    for producer, endpoint in kv_event_feeds(config, args.kv_events_endpoint):
        from pdserve.epp.kv_events import subscribe

        tasks.append(asyncio.create_task(subscribe(producer, endpoint)))
    limit = args.max_request_body_bytes
    # A BUFFERED body comes in one message: gRPC's 4 MiB default must not be the limit.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit + 2**20)])
    pb_grpc.add_ExternalProcessorServicer_to_server(ExtProc(director, limit), server)
    server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    health_server = grpc.aio.server()
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, health_server)
    health_server.add_insecure_port(f"{args.host}:{args.grpc_health_port}")
    start_http_server(args.metrics_port, args.host, registry=metrics.registry)
    await server.start()
    await health_server.start()
    for name in SERVICES:
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def pool_gauges() -> None:
        while True:
            director.observe_pool()
            await asyncio.sleep(1)

    tasks.append(asyncio.create_task(pool_gauges()))
    for producer, _ in kv_event_feeds(config, args.kv_events_endpoint):
        interval = producer.metrics_logging_interval()
        if interval:
            tasks.append(asyncio.create_task(log_index_size(producer, interval, log)))
    event(
        log,
        "ready",
        grpc_port=args.grpc_port,
        health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        endpoints=[e.name for e in store.list()],
        profiles=list(config.profiles),
        handler=config.handler.type_name,
    )
    stop = asyncio.Event()
    _stop_on_signals(stop)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await server.stop(1)
    await health_server.stop(0)
    await director.close()
