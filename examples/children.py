"""A task that fans out child jobs from inside the cluster and waits for them.

    iris job run --name pipeline -- python examples/children.py
"""


from iris.client import Entrypoint, IrisClient, get_job_info

info = get_job_info()
assert info is not None, "run me with `iris job run`"
with IrisClient.from_env() as client:
    # Child job ids are "<parent>/<name>"; they are killed if this job ends first.
    # "python", not sys.executable: that is this task's worker's environment, which a child running
    # on another worker (each task in its own sandbox) does not see; "python" is the child's own.
    step = client.submit(Entrypoint.from_command("python", "-c", "print('child step')"), "step", replicas=2)
    status = step.wait(timeout=300)
    print(f"{step.job_id} {status.state.value}: {status.counts.succeeded}/{status.num_tasks} tasks")
