"""CPU threads on a shared machine: how many cores this process may really use, and how OpenMP's
threads wait.

Two things made a busy neighbour cost 20-50x instead of its share of the CPU (measured on a 2-core
machine, one core held by another process): torch's OpenMP pool (and the one inside an
AOTInductor package) spin-waits at the barrier after every parallel op, so when one of its two
threads is descheduled the other burns its time slice spinning; and the pool is sized to the
machine's cores, not to the cores this process may run on (CPU affinity, a container's CPU
quota). So:

* ``prefer_passive_waits`` sets ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers) unless the
  user set a policy, before any OpenMP runtime loads — amo_engine's import does it, so it holds for
  the CLI and for code that imports amo_engine before torch; ONNX Runtime's own pool is unaffected;
* ``usable_cpus`` is the thread count every runtime gets by default: the affinity mask's size,
  capped by the cgroup CPU quota (rounded up).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_waits() -> bool:
    """Ask OpenMP runtimes loaded from now on to sleep, not spin, at barriers (unless the user set
    ``OMP_WAIT_POLICY``). Returns whether the passive policy is in force for this process."""
    if WAIT_POLICY not in os.environ and "torch" not in sys.modules:
        os.environ[WAIT_POLICY] = "PASSIVE"
    return os.environ.get(WAIT_POLICY, "").upper() == "PASSIVE"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max``, else v1 ``cfs_quota/period``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)
