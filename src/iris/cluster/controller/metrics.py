"""The controller's Prometheus metrics (``prometheus_client``), one registry per controller.

Measured as things happen: scheduling latency (a task's wait from PENDING to RUNNING) and RPC
latency by method. Read at scrape time from the controller's chunked counts: jobs and tasks by
state, queue depth (pending tasks), workers by health, committed cpu, attempt time by cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from iris.cluster.types import job_state_name, task_state_name
from iris.rpc import cluster_pb2

if TYPE_CHECKING:
    from iris.cluster.controller.reads import ReadGate
    from iris.cluster.controller.views import ClusterCounts

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.scheduling_latency = Histogram(
            "iris_scheduling_latency_seconds", "Time a task waited from PENDING until it was RUNNING.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rpc_latency = Histogram(
            "iris_rpc_duration_seconds", "Controller RPC handling time, by method.", ["method"],
            buckets=RPC_BUCKETS, registry=self.registry)
        self.rpc_refused_unauthenticated = Counter(
            "iris_rpc_unauthenticated_total", "Controller RPCs refused before their request was read: no valid token.",
            registry=self.registry)
        self.queue_wait = Histogram(
            "iris_queue_wait_seconds", "Time a task waited from PENDING until it was RUNNING, by priority band.",
            ["band"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_wait(self, band: str, seconds: float) -> None:
        """A task started ``seconds`` after it last became PENDING, placed under ``band``."""
        self.scheduling_latency.observe(seconds)
        self.queue_wait.labels(band or "interactive").observe(seconds)

    def observe_sharing(self, counts: Callable[[], SharingCounts]) -> None:
        """Export usage and policy preemptions by team and band (issue 24), read at each scrape."""
        self.registry.register(_SharingCollector(counts))

    def observe_reads(self, gate: ReadGate) -> None:
        """Export the read gate's counters (``iris.cluster.controller.reads``), read at each scrape."""
        self.registry.register(_ReadsCollector(gate))

    def observe_state(self, counts: Callable[[], ClusterCounts], lost_seconds: Callable[[], dict[str, float]]) -> None:
        """Export the controller's counts, read at each scrape."""
        self.registry.register(_StateCollector(counts, lost_seconds))


class _StateCollector(Collector):
    def __init__(self, counts: Callable[[], ClusterCounts], lost_seconds: Callable[[], dict[str, float]]) -> None:
        self._counts = counts
        self._lost_seconds = lost_seconds

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        jobs = GaugeMetricFamily("iris_jobs", "Jobs by state.", labels=["state"])
        for state, n in sorted(counts.jobs_by_state.items()):
            if state != cluster_pb2.JOB_STATE_UNSPECIFIED:
                jobs.add_metric([job_state_name(state)], n)
        yield jobs
        tasks = GaugeMetricFamily("iris_tasks", "Tasks by state.", labels=["state"])
        for state, n in sorted(counts.tasks_by_state.items()):
            if state != cluster_pb2.TASK_STATE_UNSPECIFIED:
                tasks.add_metric([task_state_name(state)], n)
        yield tasks
        yield GaugeMetricFamily("iris_queue_depth", "Tasks waiting to be scheduled (PENDING).",
                                value=counts.tasks_by_state.get(cluster_pb2.TASK_STATE_PENDING, 0))
        workers = GaugeMetricFamily("iris_workers", "Registered workers by health.", labels=["healthy"])
        workers.add_metric(["true"], counts.workers_healthy)
        workers.add_metric(["false"], counts.workers_unhealthy)
        yield workers
        yield GaugeMetricFamily("iris_committed_cpu", "Cores committed to running tasks.",
                                value=counts.committed_cpu / 1000)
        attempt = CounterMetricFamily(
            "iris_attempt_seconds", "Running time of ended attempts, by how they ended (useful: succeeded; "
            "failure, preemption, gang: lost to failed, preempted and gang-restarted attempts).", labels=["cause"])
        for cause, seconds in self._lost_seconds().items():
            attempt.add_metric([cause], seconds)
        yield attempt


@dataclass(frozen=True, slots=True)
class SharingCounts:
    """Per team: decayed usage (share-seconds) and the share of the fleet held now; policy
    preemptions by (team, band) of the victim."""

    usage: dict[str, float]
    running_share: dict[str, float]
    preemptions: dict[tuple[str, str], int]
    estimate_error_s: float | None = None
    """Median absolute error of the start-time estimates of jobs that started (seconds)."""
    estimate_in_range: float | None = None


class _SharingCollector(Collector):
    def __init__(self, counts: Callable[[], SharingCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        usage = GaugeMetricFamily("iris_team_usage_share_seconds", "Decayed usage of each team: its attempts' "
                                  "dominant share of the fleet x seconds, halved every half-life.", labels=["team"])
        for team, value in sorted(counts.usage.items()):
            usage.add_metric([team], value)
        yield usage
        running = GaugeMetricFamily("iris_team_running_share", "Dominant share of the fleet each team's running "
                                    "attempts hold now (0..1).", labels=["team"])
        for team, value in sorted(counts.running_share.items()):
            running.add_metric([team], value)
        yield running
        preempted = CounterMetricFamily("iris_policy_preemptions", "Attempts preempted by the sharing policy, by "
                                        "the victim's team and band.", labels=["team", "band"])
        for (team, band), n in sorted(counts.preemptions.items()):
            preempted.add_metric([team, band], n)
        yield preempted
        if counts.estimate_error_s is not None:
            yield GaugeMetricFamily("iris_estimate_abs_error_seconds", "Median absolute error of the p50 start "
                                    "estimates (iris job why) of the jobs that have started.",
                                    value=counts.estimate_error_s)
        if counts.estimate_in_range is not None:
            yield GaugeMetricFamily("iris_estimate_in_range_ratio", "Share of estimated jobs that started inside "
                                    "the stated p10-p90 range.", value=counts.estimate_in_range)


class _ReadsCollector(Collector):
    def __init__(self, gate: ReadGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        gate = self._gate
        yield CounterMetricFamily("iris_reads", "Reads admitted through the read gate (job lists and "
                                  "statuses, logs, the dashboard).", value=gate.reads)
        yield CounterMetricFamily("iris_reads_refused", "Reads refused because too many were waiting.",
                                  value=gate.refused)
        yield CounterMetricFamily("iris_read_wait_seconds", "Time reads waited for the reads' share of the CPU.",
                                  value=gate.waited_s)
        yield GaugeMetricFamily("iris_reads_waiting", "Reads waiting for their turn.", value=gate.waiting)
