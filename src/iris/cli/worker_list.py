"""``iris worker list``: the workers registered with the controller (attached to the ``worker``
group in ``iris.cli.main``)."""

from __future__ import annotations

import click
from rich.text import Text

from iris.cli.output import (
    connect,
    controller_option,
    handle_errors,
    human_ago,
    json_option,
    make_table,
    print_json,
    size,
    stderr_console,
    stdout_console,
    verbose_option,
)
from iris.client.models import WorkerInfo


@click.command("list")
@controller_option
@json_option
@verbose_option
@handle_errors
def worker_list(controller: str, as_json: bool, verbose: bool) -> None:
    """List workers: health, capacity, what is committed and running on each; provisioned ones
    with their platform job (e.g. the Slurm job id and state), also while still pending."""
    with connect(controller) as client:
        workers, provisioning = client.worker_report()
    if as_json:
        print_json([w.to_dict() for w in workers])
        return
    if provisioning:
        stderr_console().print(provisioning)
    if not workers:
        stderr_console().print("No workers registered.")
        return
    provisioned = any(w.platform for w in workers)
    rows = []
    for w in workers:
        if not w.registered:
            state = w.platform_state + (f" ({w.platform_reason})" if w.platform_reason else "")
            row: tuple[str | Text, ...] = (w.worker_id, "-", Text("starting", style="yellow"), "-", "-", "-", "-", "-")
            rows.append(row + ((f"{w.platform} {w.platform_id}", state) if provisioned else ()))
            continue
        gpus = f"{w.committed_gpus}/{w.gpu_count}" + (f" {w.gpu_name}" if w.gpu_name else "") if w.gpu_count else "-"
        rows.append(
            (
                w.worker_id,
                w.address,
                _health(w),
                f"{w.committed_cpu:g}/{(w.cpu or w.cpu_count):g}",
                f"{size(w.committed_memory_bytes)}/{size(w.memory_bytes)}",
                gpus,
                str(len(w.running_tasks)),
                human_ago(w.last_heartbeat_ms),
            ) + ((f"{w.platform} {w.platform_id}" if w.platform else "-", w.platform_state or "-") if provisioned
                 else ())
        )
    columns = ["WORKER", "ADDRESS", "HEALTH", "CPU", "MEMORY", "GPU", "TASKS", "HEARTBEAT"]
    if provisioned:
        columns += ["ALLOCATION", "ALLOC STATE"]
    stdout_console().print(make_table(columns, rows))
    for w in workers:
        if w.unfit:
            stderr_console().print(f"{w.worker_id} takes no tasks: {w.unfit}")
        if w.quarantined_until_ms > now_ms():
            stderr_console().print(f"{w.worker_id} quarantined ({human_until(w.quarantined_until_ms)}): "
                                   f"{w.quarantine_reason}; `iris worker release {w.worker_id}` ends it")


def _health(w: WorkerInfo) -> Text:
    if not w.healthy:
        return Text("unhealthy", style="red")
    if w.unfit:
        return Text("unfit", style="red")
    if w.draining:
        return Text("draining", style="yellow")
    if w.quarantined_until_ms > now_ms():
        return Text("quarantined", style="yellow")
    return Text("healthy", style="green")


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


def human_until(ms: int) -> str:
    seconds = max(0, (ms - now_ms()) // 1000)
    return f"for {seconds // 60}m {seconds % 60}s more" if seconds >= 60 else f"for {seconds}s more"


@click.command("drain")
@controller_option
@click.argument("worker_id")
@verbose_option
@handle_errors
def worker_drain(controller: str, worker_id: str, verbose: bool) -> None:
    """Stop placing tasks on WORKER_ID and stop its tasks (SIGTERM, their job's grace) as
    preemptions, retried elsewhere. Admin only; `iris worker release` undoes it."""
    with connect(controller) as client:
        stopped = client.drain_worker(worker_id)
    stderr_console().print(f"Draining worker {worker_id}: {stopped} tasks stopped, no new ones placed")


@click.command("release")
@controller_option
@click.argument("worker_id")
@verbose_option
@handle_errors
def worker_release(controller: str, worker_id: str, verbose: bool) -> None:
    """End WORKER_ID's drain or quarantine: it takes new tasks again. Admin only."""
    with connect(controller) as client:
        client.release_worker(worker_id)
    stderr_console().print(f"Released worker {worker_id}: it takes new tasks again")
