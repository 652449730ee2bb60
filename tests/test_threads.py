"""CPU threads on a shared machine: OpenMP threads sleep at barriers (set before torch loads), and
every runtime's default thread count is the cores this process may use (affinity, cgroup quota)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from amo_engine.threads import usable_cpus


def _policy_after(code: str, env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    done = subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                          env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_importing_amo_engine_first_makes_openmp_threads_sleep_at_barriers():
    assert _policy_after("import amo_engine", None) == "PASSIVE"
    assert _policy_after("import amo_engine", "ACTIVE") == "ACTIVE"  # the user's choice stands
    assert _policy_after("import torch, amo_engine", None) == "None"  # too late to matter: not pretended


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "50000 100000\n"}, 1),  # cgroup v2: half a CPU -> 1 thread
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs -> 2 threads (rounded up)
    ({"cpu.max": "max 100000\n"}, None),  # no quota: the affinity mask
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
])
def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if expected is None else min(expected, affinity))


def test_runtimes_default_to_the_usable_cpus(monkeypatch):
    from amo_engine.pipeline.runtime import Runtime

    before = torch.get_num_threads()
    monkeypatch.setattr("amo_engine.threads.usable_cpus", lambda: 1)
    try:
        assert Runtime(backend="ort").backend_options()["threads"] == 1
        assert torch.get_num_threads() == 1
        assert Runtime(backend="ort", threads=3).backend_options()["threads"] == 3
    finally:
        torch.set_num_threads(before)
