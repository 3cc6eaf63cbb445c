"""Prometheus metrics at /metrics, read from the store and the agent at scrape time."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OverviewCollector:
    """Turns `Overview.metrics()` into Prometheus families."""

    def __init__(self, overview):
        self.overview = overview

    def collect(self):
        m = self.overview.metrics()
        events = CounterMetricFamily("pyinspect_events", "Events stored, by kind", labels=["kind"])
        for kind, n in m["events_by_kind"].items():
            events.add_metric([kind], n)
        yield events
        yield CounterMetricFamily(
            "pyinspect_packets_captured", "Packets captured by traces", value=m["packets_captured"]
        )
        yield CounterMetricFamily(
            "pyinspect_packets_lost", "Packets lost by traces", value=m["packets_lost"]
        )
        yield CounterMetricFamily(
            "pyinspect_probe_records_lost",
            "Probe records lost (ring buffer full or reader lag)",
            value=m["probe_records_lost"],
        )
        yield GaugeMetricFamily("pyinspect_flows", "Flows stored", value=m["flows"])
        yield GaugeMetricFamily(
            "pyinspect_events_per_second",
            "Events stored per second over the last minute",
            value=m["events_per_second"],
        )
        probes = GaugeMetricFamily(
            "pyinspect_probe_up", "1 when the probe is attached", labels=["probe"]
        )
        for name, up in m["probes"].items():
            probes.add_metric([name], 1 if up else 0)
        yield probes


def render(overview):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OverviewCollector(overview))
    return generate_latest(registry)
