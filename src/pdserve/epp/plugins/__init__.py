"""Built-in plugins; importing this package registers them."""

from pdserve.epp.framework import Plugin
from pdserve.epp.plugins import (
    attributes,
    datalayer,
    filters,
    flowcontrol,
    handlers,
    inflight,
    pickers,
    prefix,
    scorers,
    topology,
)

# Plugin kinds a Ref may demand, by class name.
KINDS: dict[str, type[Plugin]] = {
    cls.__name__: cls
    for cls in (
        handlers.Decider,
        prefix.PrefixProducer,
        prefix.PrefixCacheScorer,
        inflight.InFlightLoadProducer,
        topology.TopologyExtractor,
        datalayer.DataSource,
        datalayer.Extractor,
        datalayer.Discovery,
        datalayer.Parser,
        flowcontrol.SaturationDetector,
        flowcontrol.Admitter,
        flowcontrol.FairnessPolicy,
        flowcontrol.OrderingPolicy,
        flowcontrol.UsageLimitPolicy,
    )
}
__all__ = [
    "KINDS",
    "attributes",
    "datalayer",
    "filters",
    "flowcontrol",
    "handlers",
    "inflight",
    "pickers",
    "prefix",
    "scorers",
    "topology",
]
