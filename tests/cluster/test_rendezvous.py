"""The rendezvous variables of a gang (``iris.cluster.rendezvous``), pure."""

from __future__ import annotations

from iris.cluster.ports import DEFAULT_COORDINATOR_PORT
from iris.cluster.rendezvous import Member, gang_env, lead_of


def test_gang_env_points_every_rank_at_the_lowest_placed_task_and_its_allocated_port() -> None:
    members = [Member(2, 1, "10.0.0.3:7000", 24577), Member(0, 1, "10.0.0.2:7000", 24580),
               Member(1, 1, "10.0.0.2:7000", 24581)]
    assert lead_of(members).task_index == 0
    env = gang_env(3, members, {})
    for index in (0, 1, 2):
        assert env[index]["IRIS_COORDINATOR_ADDRESS"] == "10.0.0.2:24580"
        assert (env[index]["MASTER_ADDR"], env[index]["MASTER_PORT"]) == ("10.0.0.2", "24580")
        assert env[index]["JAX_COORDINATOR_ADDRESS"] == "10.0.0.2:24580"
        assert (env[index]["RANK"], env[index]["WORLD_SIZE"], env[index]["JAX_PROCESS_ID"]) == (str(index), "3",
                                                                                                 str(index))
    assert [env[i]["LOCAL_RANK"] for i in (0, 1, 2)] == ["0", "1", "0"]  # two ranks share 10.0.0.2


def test_a_location_without_a_port_range_gets_torchrun_s_default_port() -> None:
    env = gang_env(2, [Member(1, 0, "pod-b:1"), Member(0, 0, "pod-a:1")], {})
    assert env[1]["MASTER_PORT"] == str(DEFAULT_COORDINATOR_PORT) and env[1]["MASTER_ADDR"] == "pod-a"


def test_the_job_s_own_values_win_but_not_over_iris_names() -> None:
    env = gang_env(1, [Member(0, 0, "[::1]:5", 30000)], {"MASTER_PORT": "1", "RANK": "7"})[0]
    assert "MASTER_PORT" not in env and "RANK" not in env
    assert env["IRIS_COORDINATOR_ADDRESS"] == "[::1]:30000" and env["MASTER_ADDR"] == "::1"
    assert gang_env(1, [], {}) == {}
