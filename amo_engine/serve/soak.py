"""Soak run: requests at a steady rate for minutes against a service on this machine, every response
checked against the image its request got alone; the RSS and open file descriptors of each renderer
replica sampled as it goes. Reports growth per 1,000 requests and the latency drift between the
first and the last minute.

Replica processes are found by the title Ray gives them (``ray::ServeReplica:amo-engine:renderer``)
in /proc: Linux, service on this machine.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from amo_engine.serve.loadtest import LoadTest, quantile, send

REPLICA_TITLE = "ray::ServeReplica:amo-engine:renderer"


def replica_processes() -> dict[int, dict]:
    """Every renderer replica process on this machine: pid -> {rss_mib, fds}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(REPLICA_TITLE.encode()):
                    continue
            with open(f"/proc/{entry}/status") as f:
                rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            found[int(entry)] = {"rss_mib": rss_kib / 1024, "fds": len(os.listdir(f"/proc/{entry}/fd"))}
        except (OSError, StopIteration, ValueError):  # gone meanwhile, or a zombie
            continue
    return found


@dataclass
class Soak:
    lt: LoadTest  # url, payloads, steps, sampler, client timeout
    minutes: float = 10.0
    rate: float = 1.0  # requests a second, sent on a fixed schedule whatever the answers
    sample_every_s: float = 10.0


def run(soak: Soak, reference: dict[int, str]) -> dict:
    """Send ``rate`` requests a second for ``minutes``; sample the replicas every ``sample_every_s``."""
    lt, interval = soak.lt, 1.0 / soak.rate
    total = int(soak.minutes * 60 * soak.rate)
    records, samples, lock = [], [], threading.Lock()
    start = time.perf_counter()

    def one(k: int) -> None:
        sent = time.perf_counter() - start
        outcome = send(lt, k % lt.payloads)
        with lock:
            records.append((sent, outcome))

    def sampler(stop: threading.Event) -> None:
        while True:
            with lock:
                done = len(records)
            samples.append({"t_s": round(time.perf_counter() - start, 1), "requests_done": done,
                            "replicas": replica_processes()})
            if stop.wait(soak.sample_every_s):
                return

    stop = threading.Event()
    watcher = threading.Thread(target=sampler, args=(stop,), daemon=True)
    watcher.start()
    with ThreadPoolExecutor(max(4, int(8 * soak.rate))) as pool:
        for k in range(total):
            time.sleep(max(0.0, start + k * interval - time.perf_counter()))  # the schedule, not the answers
            pool.submit(one, k)
    stop.set()
    watcher.join()
    samples.append({"t_s": round(time.perf_counter() - start, 1), "requests_done": len(records),
                    "replicas": replica_processes()})
    return summarise(soak, records, samples, reference)


def summarise(soak: Soak, records: list, samples: list[dict], reference: dict[int, str]) -> dict:
    ok = [(t, o) for t, o in records if o.status == 200 and o.error is None]
    end = soak.minutes * 60

    def window(lo: float, hi: float) -> dict:
        lat = [o.seconds for t, o in ok if lo <= t < hi]
        return {"requests": len(lat), "p50_s": quantile(lat, 0.5), "p99_s": quantile(lat, 0.99)}

    first, last = window(0, 60), window(end - 60, end)
    warm = next((s for s in samples if s["t_s"] >= 60), samples[0])  # after the first minute: warm caches
    growth = {}
    for pid, final in samples[-1]["replicas"].items():
        begin = warm["replicas"].get(pid)
        served = samples[-1]["requests_done"] - warm["requests_done"]
        if begin is None or served <= 0:
            growth[str(pid)] = {"note": "not running across the sampled span"}
            continue
        growth[str(pid)] = {"rss_mib_start": round(begin["rss_mib"], 1), "rss_mib_end": round(final["rss_mib"], 1),
                            "rss_mib_per_1000": round(1000 * (final["rss_mib"] - begin["rss_mib"]) / served, 2),
                            "fds_start": begin["fds"], "fds_end": final["fds"],
                            "fds_per_1000": round(1000 * (final["fds"] - begin["fds"]) / served, 2)}
    return {"minutes": soak.minutes, "rate_per_s": soak.rate, "steps": soak.lt.steps, "sampler": soak.lt.sampler,
            "requests": len(records), "ok": len(ok),
            "image_mismatches": sum(reference.get(o.index) != o.pixels for _, o in ok),
            "errors": [{"status": o.status, "error": o.error} for _, o in records if o.status != 200 or o.error],
            "first_minute": first, "last_minute": last,
            "p50_drift": (last["p50_s"] / first["p50_s"]) if first["p50_s"] and last["p50_s"] else None,
            "p99_drift": (last["p99_s"] / first["p99_s"]) if first["p99_s"] and last["p99_s"] else None,
            "growth_from_minute_1": growth, "samples": samples}


def table(result: dict) -> str:
    f = (lambda v: "—" if v is None else f"{v:.3f}")
    lines = [f"{result['requests']} requests at {result['rate_per_s']:g}/s over {result['minutes']:g} min: "
             f"{result['ok']} ok, {len(result['errors'])} errors, {result['image_mismatches']} image mismatches",
             "", "| window | requests | p50 s | p99 s |", "|---|---|---|---|",
             f"| first minute | {result['first_minute']['requests']} | {f(result['first_minute']['p50_s'])} | "
             f"{f(result['first_minute']['p99_s'])} |",
             f"| last minute | {result['last_minute']['requests']} | {f(result['last_minute']['p50_s'])} | "
             f"{f(result['last_minute']['p99_s'])} |",
             f"| last / first | | {f(result['p50_drift'])} | {f(result['p99_drift'])} |", "",
             "| replica pid | RSS MiB (min 1 → end) | RSS MiB per 1,000 requests | open FDs (min 1 → end) | "
             "FDs per 1,000 requests |", "|---|---|---|---|---|"]
    for pid, g in result["growth_from_minute_1"].items():
        if "note" in g:
            lines.append(f"| {pid} | {g['note']} | | | |")
        else:
            lines.append(f"| {pid} | {g['rss_mib_start']} → {g['rss_mib_end']} | {g['rss_mib_per_1000']} | "
                         f"{g['fds_start']} → {g['fds_end']} | {g['fds_per_1000']} |")
    return "\n".join(lines)
