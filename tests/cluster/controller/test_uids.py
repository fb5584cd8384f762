"""Users' task uids (issue 23, item 1): one per user from --task-uid-range, given at their first
job, durable, never shared or reused; --task-users maps users to existing Unix users."""

from __future__ import annotations

from pathlib import Path

import pytest

from iris.cluster.controller.state import ControllerState
from iris.cluster.controller.store import ControllerStore
from iris.cluster.controller.uids import TaskUids, parse_task_users, parse_uid_range
from iris.cluster.errors import InvalidArgument, ResourceExhausted

from .builders import submit


def test_each_user_gets_the_lowest_free_uid_once() -> None:
    uids = TaskUids((300_000, 300_002))
    assert [uids.ensure(u) for u in ("alice", "bob", "alice")] == [300_000, 300_001, 300_000]
    assert uids.run_as("bob") == (300_001, "") and uids.run_as("nobody") == (0, "")


def test_a_used_up_range_is_refused_and_changes_nothing() -> None:
    uids = TaskUids((300_000, 300_000))
    uids.ensure("alice")
    with pytest.raises(ResourceExhausted, match="--task-uid-range 300000-300000"):
        uids.ensure("bob")
    assert uids.uid_of("bob") == 0


def test_a_job_gives_its_owner_a_uid_that_survives_a_restart_and_a_new_range(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        submit(state, "a", owner="alice")
        submit(state, "b", owner="bob")
        submit(state, "c", owner="alice")
        store.write(state, state.drain_effects())
        assert (state.uids.uid_of("alice"), state.uids.uid_of("bob")) == (200_000, 200_001)
    with ControllerStore.open(tmp_path) as store:
        loaded = store.load()
    loaded.uids.configure((200_000, 200_009))
    assert (loaded.uids.uid_of("alice"), loaded.uids.uid_of("bob")) == (200_000, 200_001)
    submit(loaded, "d", owner="carol")
    assert loaded.uids.uid_of("carol") == 200_002  # never one that is taken


def test_a_job_is_refused_when_its_owner_can_get_no_uid() -> None:
    state = ControllerState()
    state.uids.configure((200_000, 200_000))
    submit(state, "a", owner="alice")
    with pytest.raises(ResourceExhausted):
        submit(state, "b", owner="bob")
    assert state.get_job("b") is None  # nothing changed


@pytest.mark.parametrize(("text", "rule"), [
    ("200000", "expected FIRST-LAST"), ("a-b", "expected FIRST-LAST"), ("10-2000", "must be >= 1000"),
    ("300000-200000", "must be >= the first"), ("200000-9999999999", "uids end at"),
])
def test_a_bad_uid_range_names_the_flag_and_the_rule(text: str, rule: str) -> None:
    with pytest.raises(InvalidArgument, match=rule) as info:
        parse_uid_range(text)
    assert "--task-uid-range" in str(info.value)
    assert parse_uid_range("200000-299999") == (200_000, 299_999)


def test_task_users_file(tmp_path: Path) -> None:
    good = tmp_path / "users.toml"
    good.write_text('alice = "alice"\nbob = "svc-bob"\n')
    assert parse_task_users(good.read_text(), str(good)) == {"alice": "alice", "bob": "svc-bob"}
    uids = TaskUids(unix_users=parse_task_users(good.read_text(), str(good)))
    uids.ensure("bob")
    assert uids.run_as("bob") == (200_000, "svc-bob")
    bad = tmp_path / "bad.toml"
    bad.write_text('alice = "a/b"\n')
    with pytest.raises(InvalidArgument, match="alice: a Unix user name"):
        parse_task_users(bad.read_text(), str(bad))
    bad.write_text("alice = \n")
    with pytest.raises(InvalidArgument, match="not TOML"):
        parse_task_users(bad.read_text(), str(bad))
