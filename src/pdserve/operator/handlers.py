"""The kopf wiring: which events reconcile which service, gated on holding the Lease.

Services are watched in serving.kserve.io/v1alpha2, the CRD's storage version: the API
server converts objects written in v1alpha1 through the CRD's conversion webhook, so a
watch of v1alpha2 sees every service whichever version it was written in, and reconcile
sees one shape. Everything here is thin: the plain functions below do the work against
`pdserve.kube.Objects` (tested without kopf); the kopf handlers only run them in a thread,
since the client library blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdserve.api.models import CONFIG_KIND, SERVICE_KIND
from pdserve.api.v1alpha2 import API_VERSION
from pdserve.kube import Key, Objects
from pdserve.operator import children as ch
from pdserve.operator import webhooks
from pdserve.operator.configs import services_referencing
from pdserve.operator.leader import Elector
from pdserve.operator.reconcile import Outcome, reconcile

GROUP, VERSION = API_VERSION.split("/")
SERVICES = "llminferenceservices"
CONFIGS = "llminferenceserviceconfigs"
DRIFT_SECONDS = 60.0  # how often every service is re-checked against the cluster
log = logging.getLogger(__name__)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Runtime:
    """What the handlers share: the cluster, the election, and the flags."""

    objects: Objects
    elector: Elector
    system_namespace: str = "pdserve-system"  # the install's namespace, as cli.py defaults
    namespaces: list[str] = field(default_factory=list)  # [] for every namespace
    webhook_port: int = 9443
    webhook_cert_dir: str | None = None
    operator_namespace: str = "pdserve-system"  # where the webhook Secret lives
    cert_manager: bool = False  # the Secret and caBundles are cert-manager's
    clock: Callable[[], datetime.datetime] = utc_now

    def serves(self, namespace: str | None) -> bool:
        return not self.namespaces or namespace in self.namespaces


# --- the work, without kopf -----------------------------------------------------------------
def reconcile_service(rt: Runtime, namespace: str, name: str) -> Outcome | None:
    """Reconciles the service as the API serves it now (not the event's possibly older
    copy); None when we are not the leader, the namespace is not ours, or it is gone."""
    if not rt.serves(namespace) or not rt.elector.is_leader(rt.clock()):
        return None
    service = rt.objects.get(Key(API_VERSION, SERVICE_KIND, namespace, name))
    if service is None:
        return None
    out = reconcile(rt.objects, service, rt.clock(), rt.system_namespace)
    if out.applied or out.pruned or out.problems:
        log.info(
            "%s/%s: applied %d, pruned %d%s",
            namespace,
            name,
            len(out.applied),
            len(out.pruned),
            f"; {'; '.join(out.problems)}" if out.problems else "",
        )
    return out


def config_changed(rt: Runtime, namespace: str, name: str) -> list[Outcome | None]:
    """Re-reconciles every service that merges the config (deleted ones too: their
    services must fall back to the built-in preset or report the missing baseRef)."""
    if not rt.elector.is_leader(rt.clock()):
        return []
    everywhere = namespace == rt.system_namespace
    scope = None if everywhere else namespace
    services = rt.objects.list(API_VERSION, SERVICE_KIND, scope)
    configs = rt.objects.list(API_VERSION, CONFIG_KIND, namespace)
    hit = services_referencing(name, services, configs, namespace, rt.system_namespace)
    return [reconcile_service(rt, s["metadata"]["namespace"], s["metadata"]["name"]) for s in hit]


def owner_of(child: dict[str, Any]) -> str | None:
    """The service a child belongs to, by its controller ownerReference (a label value is
    hashed for long names; the reference names the service in full)."""
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == SERVICE_KIND and ref.get("controller"):
            return str(ref["name"])
    return None


def child_changed(rt: Runtime, child: dict[str, Any]) -> Outcome | None:
    """A Deployment of ours changed (its status, or someone edited it): status and drift."""
    owner = owner_of(child)
    if owner is None:
        return None
    return reconcile_service(rt, child["metadata"]["namespace"], owner)


def reconcile_all(rt: Runtime) -> list[Outcome | None]:
    """Every service we serve: what a new leader does first, since the events a follower
    saw and skipped are not replayed by kopf (its create handlers count them as done)."""
    scopes: list[str | None] = list(rt.namespaces) or [None]
    services = [s for ns in scopes for s in rt.objects.list(API_VERSION, SERVICE_KIND, ns)]
    return [
        reconcile_service(rt, s["metadata"]["namespace"], s["metadata"]["name"]) for s in services
    ]


def lease_tick(rt: Runtime) -> bool:
    """One renewal; on becoming leader, a pass over every service. True while leading."""
    was = rt.elector.is_leader(rt.clock())
    leads = rt.elector.try_acquire(rt.clock())
    if leads and not was:
        reconcile_all(rt)
    return leads


async def keep_lease(rt: Runtime, stop: asyncio.Event) -> None:
    """Renews (or tries to take) the Lease until told to stop, then releases it."""
    while not stop.is_set():
        await asyncio.to_thread(lease_tick, rt)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rt.elector.renew_every)
    await asyncio.to_thread(rt.elector.release, rt.clock())


async def start_webhooks(rt: Runtime) -> Any:
    """The admission and conversion webhooks (webhooks.py), serving the certificate every
    replica shares; None when --webhook-port is 0."""
    if not rt.webhook_port:
        return None
    return await webhooks.serve(
        "0.0.0.0",
        rt.webhook_port,
        rt.webhook_cert_dir,
        rt.objects,
        namespace=rt.operator_namespace,
        cert_manager=rt.cert_manager,
    )


# --- kopf -----------------------------------------------------------------------------------
def build_registry(rt: Runtime) -> Any:
    """A kopf registry with every handler bound to `rt` (no module-level state)."""
    import kopf

    registry = kopf.OperatorRegistry()
    svc: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": SERVICES}
    state: dict[str, Any] = {}

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        prefix = "pdserve.kserve.io"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
        settings.posting.level = logging.WARNING
        # The webhooks first: when they fail (cert-manager's Secret not issued yet), kopf
        # retries this handler, and no Lease task of the failed try is left running.
        state["webhooks"] = await start_webhooks(rt)
        state["stop"] = asyncio.Event()
        state["lease"] = asyncio.create_task(keep_lease(rt, state["stop"]))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if "stop" in state:
            state["stop"].set()
            await state["lease"]
        if state.get("webhooks") is not None:
            await state["webhooks"].cleanup()

    async def one(namespace: str | None, name: str | None, **_: Any) -> None:
        if namespace and name:
            await asyncio.to_thread(reconcile_service, rt, namespace, name)

    kopf.on.resume(**svc, id="resume", registry=registry)(one)
    kopf.on.create(**svc, id="create", registry=registry)(one)
    kopf.on.update(**svc, id="update", registry=registry)(one)
    kopf.timer(**svc, id="drift", interval=DRIFT_SECONDS, registry=registry)(one)

    @kopf.on.event(GROUP, VERSION, CONFIGS, registry=registry)
    async def config(namespace: str | None, name: str | None, **_: Any) -> None:
        if namespace and name:
            await asyncio.to_thread(config_changed, rt, namespace, name)

    ours = {ch.MANAGED_BY_LABEL: ch.MANAGED_BY}

    @kopf.on.event("apps", "v1", "deployments", labels=ours, registry=registry)
    async def deployment(body: kopf.Body, **_: Any) -> None:
        await asyncio.to_thread(child_changed, rt, dict(body))

    return registry
