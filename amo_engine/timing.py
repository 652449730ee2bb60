"""The measuring harness: timers, interleaving, a contention watch, a memory pass, the machine.

Nothing here knows a model. What it promises:

* **Interleaved rounds.** Every round runs every arm once, so slow drifts of the machine hit all
  arms alike; p50 is the headline, with mean, p90, min and the raw samples.
* **Nothing else runs while a timed call runs.** Memory is sampled in a separate, untimed pass
  (the 2 ms sampler thread never shares the CPU with a timed call), and the contention watch only
  reads /proc between calls.
* **Contention is detected, not guessed.** Before the bench and after every round it counts the
  runnable tasks of *other* processes (``procs_running`` in /proc/stat minus this process's own
  running threads, which may still be spinning down after a call) and times a fixed calibration
  GEMM; a round whose calibration runs slower than ``SLOW_CALIBRATION`` x the median round, or that
  saw other runnable tasks on the cores our threads need, is *contended*, and so are the rows
  timed in it. Per call it also records CPU time / wall time: with ``threads`` threads busy this sits
  near ``threads``; a starved process drops below.
* **Spread is judged.** A row whose (p90 - min) / p50 exceeds ``WIDE_SPREAD`` is marked wide.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

SLOW_CALIBRATION = 1.25  # a round's calibration GEMM this much slower than the median round: contended
WIDE_SPREAD = 0.20  # (p90 - min) / p50 above this: the row's spread is too wide to trust its p50
CALIBRATION_N = 768  # the calibration GEMM: [N, N] @ [N, N], a few ms (shorter ones time the timer)


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    p50 = statistics.median(s)
    p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
    return {"p50": p50, "mean": statistics.fmean(s), "p90": p90, "min": s[0], "n": len(s), "samples": samples,
            "spread": (p90 - s[0]) / p50 if p50 > 0 else 0.0, "wide": p50 > 0 and (p90 - s[0]) / p50 > WIDE_SPREAD}


def set_threads(threads: int) -> None:
    """Torch's intra-op threads for every torch arm (ORT arms take theirs in their session)."""
    torch.set_num_threads(threads)


def runnable_tasks() -> int:
    """Tasks runnable right now on the machine (this process's threads included), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def own_running_threads() -> int:
    """This process's threads in state R (the caller's among them)."""
    import glob

    count = 0
    for path in glob.glob("/proc/self/task/*/stat"):
        try:
            with open(path) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        count += state == "R"
    return count


def other_runnable() -> int:
    """Runnable tasks that belong to other processes."""
    return max(0, runnable_tasks() - own_running_threads())


def best_gemm_seconds(n: int, reps: int, warmup: int = 0) -> float:
    """Best-of-``reps`` time of an [n, n] @ [n, n] fp32 product at torch's current thread count."""
    a = torch.ones(n, n)
    for _ in range(warmup):
        a @ a
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return best


def calibration_seconds(reps: int = 5) -> float:
    """The fixed calibration GEMM's best time: a slower round means the machine is shared."""
    return best_gemm_seconds(CALIBRATION_N, reps)


@dataclass
class ContentionWatch:
    """Runnable-process counts and calibration times around the bench; verdicts per round."""

    threads: int  # threads the arms use
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    before: list[int] = field(default_factory=list)  # other processes' runnable tasks before the bench
    rounds: list[dict] = field(default_factory=list)  # per round: other_runnable, calibration_s

    def sample_before(self, seconds: float = 1.0, every: float = 0.05) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.before.append(other_runnable())
            time.sleep(every)

    def mark_round(self) -> int:
        """Record one round's runnable count and calibration time; returns the round index."""
        self.rounds.append({"other_runnable": other_runnable(), "calibration_s": calibration_seconds()})
        return len(self.rounds) - 1

    def contended_rounds(self) -> set[int]:
        if not self.rounds:
            return set()
        typical = statistics.median(r["calibration_s"] for r in self.rounds)
        return {i for i, r in enumerate(self.rounds)
                if r["calibration_s"] > SLOW_CALIBRATION * typical or self._others_crowd(r["other_runnable"])}

    def _others_crowd(self, others: float) -> bool:
        """More runnable tasks of other processes than the cores our threads leave free."""
        return others > max(0, self.cores - self.threads)

    @property
    def busy_before(self) -> bool:
        """Other processes wanted the cores our threads need before we started (median of samples)."""
        return bool(self.before) and self._others_crowd(statistics.median(self.before))

    def verdict(self) -> dict:
        contended = sorted(self.contended_rounds())
        reasons = []
        if self.busy_before:
            reasons.append(f"other processes runnable before the bench (median {statistics.median(self.before):g} "
                           f"runnable tasks on {self.cores} cores)")
        if contended:
            reasons.append(f"{len(contended)} of {len(self.rounds)} rounds contended (calibration > "
                           f"{SLOW_CALIBRATION}x the median round, or other processes' runnable tasks on the cores "
                           f"our {self.threads} threads need)")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {"contended": bool(reasons), "reasons": reasons, "contended_rounds": contended,
                "runnable_before": self.before, "rounds": self.rounds, "cores": self.cores, "threads": self.threads,
                "loadavg_1min": load}


@dataclass
class Timed:
    """Wall seconds and CPU-time / wall ratios of one arm's calls, with the round of each call."""

    wall: list[float] = field(default_factory=list)
    cpu_per_wall: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    def add(self, wall: float, cpu: float, round_index: int) -> None:
        self.wall.append(wall)
        self.cpu_per_wall.append(cpu / wall if wall > 0 else 0.0)
        self.rounds.append(round_index)

    def summary(self, contended_rounds: set[int]) -> dict:
        out = stats(self.wall)
        out["cpu_per_wall"] = statistics.median(self.cpu_per_wall) if self.cpu_per_wall else 0.0
        out["contended_samples"] = sum(r in contended_rounds for r in self.rounds)
        return out


def timed_call(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; ``sync`` waits for the device first."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0, time.process_time() - cpu0


def interleaved(arms: dict[str, Callable[[], object]], rounds: int, watch: ContentionWatch | None = None,
                warmup: int = 1, sync: Callable[[], None] | None = None) -> dict[str, Timed]:
    """Time every arm once per round, round-robin, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    if sync is not None:
        sync()
    timed = {name: Timed() for name in arms}
    for _ in range(rounds):
        index = watch.mark_round() if watch is not None else 0
        for name, fn in arms.items():
            wall, cpu = timed_call(fn, sync)
            timed[name].add(wall, cpu, index)
    return timed


def alone(fn: Callable[[], object], calls: int, sync: Callable[[], None] | None = None) -> dict:
    """One arm timed back to back, nothing interleaved: what the harness's own cost is checked against."""
    fn()
    return stats([timed_call(fn, sync)[0] for _ in range(calls)])


class RssWatch:
    """Peak resident memory above the level at start, sampled every 2 ms on a thread (Linux).
    Used only in the untimed memory pass."""

    def __init__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_kb = self.peak_kb = self._rss_kb()

    @staticmethod
    def _rss_kb() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
        except OSError:
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._rss_kb())
            self._stop.wait(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._rss_kb())

    @property
    def delta_mb(self) -> float:
        return (self.peak_kb - self.start_kb) / 1024


def memory_pass(arms: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Each arm's resident-memory rise over one untimed call (MB)."""
    out = {}
    for name, fn in arms.items():
        with RssWatch() as watch:
            fn()
        out[name] = watch.delta_mb
    return out


def gemm_gflops(n: int = 1024, reps: int = 10) -> float:
    """This machine's fp32 GEMM rate at torch's current thread count (best of ``reps``)."""
    return 2 * n**3 / best_gemm_seconds(n, reps, warmup=3) / 1e9


CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_facts() -> dict:
    """Vendor, family, model, model name and the SIMD flags that decide GEMM speed (Linux)."""
    facts = {"name": platform.processor() or platform.machine(), "vendor": "", "family": None, "model": None,
             "flags": [], "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name":
                    facts["name"] = value
                elif key == "vendor_id":
                    facts["vendor"] = value
                elif key == "cpu family":
                    facts["family"] = int(value)
                elif key == "model" and facts["model"] is None:
                    facts["model"] = int(value)
                elif key == "flags":
                    have = set(value.split())
                    facts["flags"] = [f for f in CPU_FLAGS if f in have]
                    break
    except (OSError, ValueError):
        pass
    return facts


def environment(threads: int) -> dict:
    """Machine and software facts stored with every result row."""
    import subprocess

    import diffusers

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=False).stdout.strip()
    except OSError:
        rev = ""
    return {"cpu": cpu_facts(), "threads": threads, "gemm_gflops": gemm_gflops(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "onnxruntime": ort_version, "python": platform.python_version(),
            "git": rev, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
