"""One declaration per job field (``iris.cluster.spec``): the wire, the validator, the client's
keyword fields, the CLI's flags and the display all follow from it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from iris.cli.job import parse_job_request
from iris.cli.main import cli
from iris.cluster.errors import InvalidArgument
from iris.cluster.failures import ExitRule
from iris.cluster.spec import (
    CLI_FIELDS,
    FIELDS,
    WORKER_FIELDS,
    Entrypoint,
    JobSpec,
    matches_filters,
    parse_list_filters,
    spec_fields,
)
from iris.cluster.types import ResourceSpec
from iris.cluster.validation import validate_job_spec, validate_launch_request, validate_run_task
from iris.rpc import cluster_pb2


def test_every_jobspec_attribute_is_declared_once_with_help() -> None:
    attributes = [f.name for f in dataclasses.fields(JobSpec)]
    assert [f.name for f in FIELDS] == attributes
    assert all(f.help.strip() for f in FIELDS)
    assert len({f.cli.flag for f in CLI_FIELDS if f.cli}) == len(CLI_FIELDS)


names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
env_names = st.from_regex(r"[A-HJ-Z][A-Z0-9_]{0,10}", fullmatch=True)  # never IRIS_*
specs = st.builds(
    JobSpec,
    name=names,
    entrypoint=st.lists(st.text(alphabet="abc -=/", min_size=1, max_size=8), min_size=1, max_size=4).map(
        lambda argv: Entrypoint(argv=tuple(argv))),
    resources=st.builds(ResourceSpec, cpu=st.integers(1, 64), memory=st.integers(0, 1 << 40)),
    replicas=st.integers(1, 1000),
    max_task_failures=st.integers(0, 100),
    max_retries_failure=st.integers(0, 100),
    max_retries_preemption=st.integers(0, 1000),
    scheduling_timeout_seconds=st.floats(0, 1e6),
    env=st.dictionaries(env_names, st.text(max_size=20).filter(lambda v: "\0" not in v), max_size=4),
    ports=st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), max_size=3, unique=True).map(tuple),
    coscheduled=st.booleans(),
    exit_rules=st.lists(st.builds(ExitRule, st.integers(1, 255), st.just(255),
                                  st.sampled_from(["fail-job", "failure", "preemption"])), max_size=3).map(tuple),
    retry_backoff_seconds=st.floats(0, 3600),
    termination_grace_seconds=st.none() | st.floats(0, 600),
    timeout_seconds=st.floats(0, 1e6),
    max_similar_failures=st.integers(0, 10),
    with_packages=st.lists(st.from_regex(r"[a-z]{1,8}(==[0-9]\.[0-9])?", fullmatch=True), max_size=3).map(tuple),
    labels=st.dictionaries(st.from_regex(r"[a-z]([a-z0-9./-]{0,8}[a-z0-9])?", fullmatch=True),
                           st.from_regex(r"([a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?)?", fullmatch=True), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(specs)
def test_a_valid_spec_survives_the_wire_and_the_validators(spec: JobSpec) -> None:
    validate_job_spec(spec)
    request = spec.to_proto()
    assert JobSpec.from_proto(cluster_pb2.Controller.LaunchJobRequest.FromString(request.SerializeToString())) == spec
    assert validate_launch_request(request) == spec
    run = cluster_pb2.Worker.RunTaskRequest(job_id="j", task_id="j/task-0", num_tasks=1)
    spec.to_run_task(run)
    assert validate_run_task(run) == spec.entrypoint
    for f in WORKER_FIELDS:
        assert f.key(f.get(run)) == f.key(f.get(request)), f.name


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(),
                                          st.text(max_size=30), st.lists(st.text(max_size=5), max_size=3)))
def test_a_bad_field_value_is_refused_naming_the_field(f: Any, value: Any) -> None:
    spec = JobSpec(name="ok", entrypoint=Entrypoint(argv=("true",)))
    try:
        candidate = spec.replace(**{f.name: value})
    except (TypeError, ValueError, AttributeError):
        return  # not even a JobSpec: the client or the CLI refuses it before
    try:
        validate_job_spec(candidate)
    except InvalidArgument as e:
        assert str(e).startswith(("name", f.name, "entrypoint", "env", "resources")), str(e)


def test_client_keyword_fields_are_the_declared_ones_with_their_aliases() -> None:
    assert spec_fields({"max_retries_failure": 3, "on_exit": ["2=fail-job"], "ports": "http"}) == {
        "max_retries_failure": 3, "exit_rules": (ExitRule(2, 2, "fail-job"),), "ports": ("http",)}
    with pytest.raises(InvalidArgument, match="max_retry: not a job field"):
        spec_fields({"max_retry": 3})


def test_cli_flags_come_from_the_declarations() -> None:
    text = CliRunner().invoke(cli, ["job", "run", "--help"]).output
    for f in CLI_FIELDS:
        assert f.cli is not None and f.cli.flag in text
    request = parse_job_request(
        ["python", "x.py"], replicas="2", cpu=1, max_retries_failure="3", env=("A=1",), ports=("http",),
        coscheduled=True, exit_rules=("2=fail-job",), termination_grace_seconds="5", no_bundle=True)
    spec = request.spec
    assert (spec.replicas, spec.max_retries_failure, dict(spec.env), spec.ports, spec.coscheduled) == (
        2, 3, {"A": "1"}, ("http",), True)
    assert (spec.exit_rules, spec.termination_grace_seconds) == ((ExitRule(2, 2, "fail-job"),), 5.0)


def test_a_spec_shown_to_another_user_leaves_out_what_is_not_public() -> None:
    spec = JobSpec(name="j", entrypoint=Entrypoint(argv=("train", "--key=secret")), env={"TOKEN": "x"},
                   ports=("http",), max_retries_failure=2)
    hidden = JobSpec.from_proto(spec.for_status(False))
    assert (hidden.entrypoint, dict(hidden.env), hidden.ports, hidden.max_retries_failure) == (
        Entrypoint(), {}, ("http",), 2)
    assert "env" not in hidden.to_json(public_only=True) and "entrypoint" not in hidden.to_json(public_only=True)
    shown = dict(spec.shown())
    assert (shown["entrypoint"], shown["env"], shown["max_retries_failure"]) == ("train --key=secret", "TOKEN=x", "2")


def test_a_callables_pickle_never_travels_back_in_a_status() -> None:
    spec = JobSpec(name="fn", entrypoint=Entrypoint.from_callable(print, "x" * 100_000))
    status_spec = spec.for_status(True)
    assert len(status_spec.SerializeToString()) < 1000
    assert dict(JobSpec.from_proto(status_spec).shown())["entrypoint"] == "a Python callable"


def test_label_selectors_match_as_kubernetes_equality_selectors_do() -> None:
    spec = JobSpec(name="j", entrypoint=Entrypoint(argv=("true",)), labels={"team": "ml", "tier": ""})
    assert matches_filters(spec, parse_list_filters({"labels": ["team=ml", "tier", "team!=infra", "tier="]}))
    assert not matches_filters(spec, parse_list_filters({"labels": ["team=infra"]}))
    assert not matches_filters(spec, parse_list_filters({"labels": ["owner"]}))
    for bad in ("", "a b=c", "k=v v", "-k=v"):
        with pytest.raises(InvalidArgument, match="label"):
            parse_list_filters({"labels": [bad]})
    with pytest.raises(InvalidArgument, match="labels: 'k'='bad value'"):
        validate_job_spec(spec.replace(labels={"k": "bad value"}))
