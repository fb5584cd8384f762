"""cgroup limits: detection and the files written, against fake cgroup trees (v1 and v2)."""

from __future__ import annotations

from pathlib import Path

from iris.cluster.worker.cgroups import CgroupLimits


def fake_v2(tmp_path: Path, controllers: str = "cpu memory pids") -> tuple[Path, Path, Path]:
    root = tmp_path / "cgroup"
    own = root / "worker.slice"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/worker.slice\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n")
    return root, proc, mounts


def fake_v1(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    root = tmp_path / "cgroup"
    for hierarchy, limit_file in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.cfs_quota_us")):
        base = root / hierarchy / "box" / f"iris-{name}"
        base.mkdir(parents=True)
        (base / limit_file).write_text("-1\n")  # the kernel creates these files with the directory
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/box\n1:cpu,cpuacct:/box\n0::/\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"tmpfs {root} tmpfs rw 0 0\ncgroup {root}/memory cgroup rw,memory 0 0\n")
    return root, proc, mounts


def test_cgroups_v2_detected_and_task_limits_written(tmp_path: Path) -> None:
    root, proc, mounts = fake_v2(tmp_path)
    limits = CgroupLimits.detect("w1", root=root, proc_self_cgroup=proc, mounts=mounts)
    assert limits is not None and limits.version == 2
    assert (root / "worker.slice" / "iris-w1" / "cgroup.subtree_control").read_text() == "+memory +cpu"
    cg = limits.create("job/task-0/attempt-1", cpu_millicores=2000, memory_bytes=512 * 1024**2)
    assert cg is not None and cg.memory_dir == root / "worker.slice" / "iris-w1" / "job_task-0_attempt-1-1"
    assert (cg.memory_dir / "memory.max").read_text() == str(512 * 1024**2)
    assert (cg.memory_dir / "cpu.max").read_text() == "200000 100000"
    cg.add(4242)
    assert (cg.memory_dir / "cgroup.procs").read_text() == "4242"
    assert not cg.oom_killed()
    (cg.memory_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()


def test_cgroups_v2_without_memory_controller_is_not_used(tmp_path: Path) -> None:
    root, proc, mounts = fake_v2(tmp_path, controllers="cpu pids")
    assert CgroupLimits.detect("w1", root=root, proc_self_cgroup=proc, mounts=mounts) is None


def test_cgroups_v1_detected_and_task_limits_written(tmp_path: Path) -> None:
    root, proc, mounts = fake_v1(tmp_path, "w1")
    limits = CgroupLimits.detect("w1", root=root, proc_self_cgroup=proc, mounts=mounts)
    assert limits is not None and limits.version == 1
    cg = limits.create("t/task-0/attempt-0", cpu_millicores=1000, memory_bytes=1024**3)
    assert cg is not None and cg.memory_dir is not None and cg.cpu_dir is not None
    assert (cg.memory_dir / "memory.limit_in_bytes").read_text() == str(1024**3)
    assert (cg.cpu_dir / "cpu.cfs_quota_us").read_text() == "100000"
    cg.add(99)
    assert (cg.memory_dir / "cgroup.procs").read_text() == "99" and (cg.cpu_dir / "cgroup.procs").read_text() == "99"
    (cg.memory_dir / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_killed()


def test_cgroups_task_without_limits_gets_no_cgroup(tmp_path: Path) -> None:
    root, proc, mounts = fake_v1(tmp_path, "w1")
    limits = CgroupLimits.detect("w1", root=root, proc_self_cgroup=proc, mounts=mounts)
    assert limits is not None and limits.create("t/task-0/attempt-0", cpu_millicores=0, memory_bytes=0) is None


def test_cgroups_not_writable_or_absent_means_none(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/\n")
    mounts = tmp_path / "mounts"
    mounts.write_text("")
    assert CgroupLimits.detect("w1", root=tmp_path / "nothing", proc_self_cgroup=proc, mounts=mounts) is None


def test_cgroups_released_empty_cgroup_is_reused_for_the_same_shape(tmp_path: Path) -> None:
    root, proc, mounts = fake_v2(tmp_path)
    limits = CgroupLimits.detect("w1", root=root, proc_self_cgroup=proc, mounts=mounts)
    assert limits is not None
    first = limits.create("a.0", cpu_millicores=1000, memory_bytes=1024**3)
    assert first is not None and first.memory_dir is not None
    (first.memory_dir / "memory.events").write_text("oom_kill 1\n")
    limits.release(first)  # no cgroup.procs entries: empty, kept for reuse
    again = limits.create("b.0", cpu_millicores=1000, memory_bytes=1024**3)
    assert again is not None and again.memory_dir == first.memory_dir
    assert not again.oom_killed()  # the earlier attempt's OOM kill is not this one's
    (again.memory_dir / "memory.events").write_text("oom_kill 2\n")
    assert again.oom_killed()
    other = limits.create("c.0", cpu_millicores=2000, memory_bytes=1024**3)
    assert other is not None and other.memory_dir != first.memory_dir


def test_a_cgroup_that_cannot_be_made_is_an_error_never_a_silent_none(tmp_path: Path) -> None:
    """The worker's groups were taken away and cannot be made again: ``create`` says so (the worker
    then runs no more tasks) instead of letting the task run without its limits."""
    import pytest

    from iris.cluster.worker.cgroups import CgroupUnavailable

    root, proc, mounts = fake_v2(tmp_path)
    limits = CgroupLimits.detect("w1", root=root, proc_self_cgroup=proc, mounts=mounts)
    assert limits is not None
    (root / "worker.slice").rename(tmp_path / "moved")
    (root / "worker.slice").write_text("")  # in its place something that holds no directories
    with pytest.raises(CgroupUnavailable, match="could not make a cgroup"):
        limits.create("job/task-0/attempt-0", cpu_millicores=1000, memory_bytes=1024**2)
