"""The rendezvous variables of a gang (``iris.cluster.rendezvous``), pure."""

from __future__ import annotations

from iris.cluster.rendezvous import COORDINATOR_PORTS, Member, coordinator_port, gang_env


def test_gang_env_points_every_rank_at_the_lowest_placed_task() -> None:
    members = [Member(2, 1, "10.0.0.3:7000"), Member(0, 1, "10.0.0.2:7000"), Member(1, 1, "10.0.0.2:7000")]
    env = gang_env("train", 3, members, {})
    port = coordinator_port("train", 1)
    assert port in COORDINATOR_PORTS and port == coordinator_port("train", 1) != coordinator_port("train", 2)
    for index in (0, 1, 2):
        assert env[index]["IRIS_COORDINATOR_ADDRESS"] == f"10.0.0.2:{port}"
        assert (env[index]["MASTER_ADDR"], env[index]["MASTER_PORT"]) == ("10.0.0.2", str(port))
        assert (env[index]["RANK"], env[index]["WORLD_SIZE"], env[index]["JAX_PROCESS_ID"]) == (str(index), "3",
                                                                                                 str(index))
    assert [env[i]["LOCAL_RANK"] for i in (0, 1, 2)] == ["0", "1", "0"]  # two ranks share 10.0.0.2


def test_the_job_s_own_values_win_but_not_over_iris_names() -> None:
    env = gang_env("j", 1, [Member(0, 0, "[::1]:5")], {"MASTER_PORT": "1", "RANK": "7"})[0]
    assert "MASTER_PORT" not in env and "RANK" not in env
    assert env["IRIS_COORDINATOR_ADDRESS"].startswith("[::1]:") and env["MASTER_ADDR"] == "::1"
    assert gang_env("j", 1, [], {}) == {}
