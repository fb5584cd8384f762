"""The one validator: its rules, and (fuzzed with Hypothesis) that the controller accepts exactly
what a worker can run, and that no error echoes an oversized value."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iris.cluster.errors import InvalidArgument
from iris.cluster.spec import Entrypoint, JobSpec
from iris.cluster.types import ResourceSpec
from iris.cluster.validation import (
    DEFAULT_LIMITS,
    MAX_ARG_STRLEN,
    MAX_MESSAGE_BYTES,
    Limits,
    validate_job_spec,
    validate_launch_request,
    validate_run_task,
)
from iris.rpc import cluster_pb2


def spec(**changes: object) -> JobSpec:
    return JobSpec(name="job", entrypoint=Entrypoint(argv=("true",))).replace(**changes)


def run_task_for(s: JobSpec) -> cluster_pb2.Worker.RunTaskRequest:
    """What the worker-daemon backend sends for task 0 of a job of this spec."""
    request = cluster_pb2.Worker.RunTaskRequest(
        job_id=s.name, task_id=f"{s.name}/task-0", task_index=0, num_tasks=s.replicas, attempt_id=0,
        serialized_entrypoint=s.entrypoint.serialize(),
        environment=cluster_pb2.EnvironmentConfig(env_vars=dict(s.env)),
        bundle_hash=s.bundle_hash, resources=s.resources.to_proto(), ports=list(s.ports),
    )
    return request


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "job\n"}, "name"),  # a trailing newline must not slip past an anchored pattern
        ({"name": "a/b"}, "name"),
        ({"entrypoint": Entrypoint(argv=("sh", "-c", "echo\0hi"))}, "entrypoint.command.argv[2]"),
        ({"entrypoint": Entrypoint(argv=("",))}, "entrypoint.command.argv"),
        ({"env": {"A\n": "x"}}, "env"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"env": {"A": "x\0y"}}, "env.A"),
        ({"env": {"BIG": "x" * MAX_ARG_STRLEN}}, "env.BIG"),
        ({"env": {f"V{i}": "x" * 100_000 for i in range(11)}}, "env"),
        ({"ports": ("http", "HTTP")}, "ports"),
        ({"ports": ("http\n",)}, "ports"),
        ({"replicas": 0}, "replicas"),
        ({"max_retries_failure": -1}, "max_retries_failure"),
        ({"scheduling_timeout_seconds": float("nan")}, "scheduling_timeout_seconds"),
        ({"bundle_hash": "a" * 64 + "\n"}, "bundle_hash"),
        ({"parent_job_id": "p\0"}, "parent_job_id"),
    ],
)
def test_validation_refuses_what_a_worker_could_not_run_naming_the_field(changes: dict[str, object], field: str
                                                                        ) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_job_spec(spec(**changes))
    assert str(error.value).startswith(f"{field}:"), str(error.value)


def test_validation_error_never_echoes_an_oversized_value() -> None:
    huge = "n" * 100_000 + "!"
    for changes in ({"name": huge}, {"env": {huge: "x"}}, {"ports": (huge,)}):
        with pytest.raises(InvalidArgument) as error:
            validate_job_spec(spec(**changes))
        assert len(str(error.value)) < 300


def test_validation_wire_names_are_the_fields_the_caller_sent() -> None:
    request = spec(env={"A": "x\0"}).to_proto()
    with pytest.raises(InvalidArgument, match=r"^environment\.env_vars\.A:"):
        validate_launch_request(request)
    request = spec().to_proto()
    request.resources.memory_bytes = -1
    with pytest.raises(InvalidArgument, match=r"^resources\.memory_bytes:"):
        validate_launch_request(request)


def test_validation_limits_fit_in_one_message() -> None:
    assert DEFAULT_LIMITS.max_task_request_bytes <= MAX_MESSAGE_BYTES
    # The largest accepted single-task request really fits the worker's receive limit.
    biggest = spec(entrypoint=Entrypoint(pickled=b"p" * DEFAULT_LIMITS.max_entrypoint_bytes),
                   env={f"V{i}": "x" * 100_000 for i in range(10)})
    validate_job_spec(biggest)
    assert run_task_for(biggest).ByteSize() <= DEFAULT_LIMITS.max_task_request_bytes


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_name = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), _text)
_specs = st.builds(
    lambda name, argv, env, ports, cpu, replicas: JobSpec(
        name=name, entrypoint=Entrypoint(argv=tuple(argv)), resources=ResourceSpec(cpu=cpu), replicas=replicas,
        env=env, ports=tuple(ports),
    ),
    _name,
    st.lists(_text, min_size=1, max_size=4),
    st.dictionaries(_text, _text, max_size=4),
    st.lists(st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), _text), max_size=3),
    st.one_of(st.integers(1, 64), st.integers(1, 64_000).map(lambda m: m / 1000)),
    st.integers(-2, 5),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs)
def test_validation_controller_accepts_exactly_what_a_worker_accepts(s: JobSpec) -> None:
    """Fuzzed: a job the controller would take is one every worker runs; one the controller
    refuses is refused with a field name, never with a crash."""
    try:
        accepted = validate_launch_request(s.to_proto(), Limits())
    except InvalidArgument as e:
        assert ":" in str(e)
        return
    # The controller took it: the worker must take the task it becomes.
    entrypoint = validate_run_task(run_task_for(accepted))
    assert entrypoint == accepted.entrypoint
    assert JobSpec.from_proto(accepted.to_proto()) == accepted  # the wire conversion round-trips


@pytest.mark.parametrize(("packages", "needle"), [
    (("-r", ), "with_packages[0]: must be a package, not an option"),
    (("",), "with_packages[0]"),
    (("numpy\n--index-url=evil",), "line breaks"),
    (tuple(f"p{i}" for i in range(65)), "at most 64 packages"),
])
def test_validation_with_packages_refuses_options_and_odd_values(packages: tuple[str, ...], needle: str) -> None:
    spec = JobSpec(name="j", entrypoint=Entrypoint(argv=("true",)), with_packages=packages)
    with pytest.raises(InvalidArgument, match=re.escape(needle)):
        validate_job_spec(spec)
    with pytest.raises(InvalidArgument, match=re.escape(needle)):
        validate_launch_request(spec.to_proto(), Limits())
