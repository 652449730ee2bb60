"""Load test: concurrent HTTP clients against a running service (or one started here), every response
checked — status, the PNG decodes, and its pixels equal the image the same request got when it ran
alone — then throughput and p50/p95/p99 latency per concurrency. Optionally kills a renderer replica
process mid-run and reports what the clients saw and how long the service took to recover.

Stdlib clients (threads + urllib), bounded in requests and time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

WORDS = ("HAPPY", "OPEN", "CAFE", "SALE", "HOTEL", "PIZZA", "BOOKS", "MUSIC", "BREAD", "APPLE", "TAXI", "BANK")


@dataclass
class Outcome:
    index: int  # which payload
    status: int
    seconds: float
    attempts: int  # 1 + retries after 503
    pixels: str | None = None  # sha256 of the decoded RGB pixels of each image, joined
    batch_images: int | None = None
    error: str | None = None


@dataclass
class LoadTest:
    url: str
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests_per_level: int = 16
    payloads: int = 8
    steps: int = 8
    sampler: str = "amo"
    timeout_s: float = 120.0
    max_seconds: float = 600.0
    max_retries: int = 3  # after a 503 with Retry-After
    kill_replica_after_s: float | None = None  # after the levels: kill a replica this far into a fault run
    started_here: bool = False  # the service was started by this process (it may still be coming up)
    results: dict = field(default_factory=dict)


def payload(i: int, steps: int, sampler: str) -> dict:
    return {"prompt": f"a dark sign that says '{WORDS[i % len(WORDS)]}'", "seed": 1000 + i, "steps": steps,
            "sampler": sampler, "n": 1}


def pixel_hash(b64: str) -> str:
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()  # fails loudly on a broken PNG
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def post(url: str, body: dict, timeout: float) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        try:
            body = json.loads(err.read())
        except ValueError:
            body = {}
        return err.code, body, dict(err.headers)


def send(lt: LoadTest, index: int) -> Outcome:
    """One request, retried after a 503 as its Retry-After says (at most ``max_retries`` times)."""
    start, attempts = time.perf_counter(), 0
    while True:
        attempts += 1
        try:
            status, body, headers = post(lt.url + "/v1/images/generations", payload(index, lt.steps, lt.sampler),
                                         lt.timeout_s)
        except (OSError, ValueError) as err:  # connection reset, timeout
            return Outcome(index, 0, time.perf_counter() - start, attempts, error=f"{type(err).__name__}: {err}")
        if status == 503 and attempts <= lt.max_retries:
            time.sleep(float(headers.get("Retry-After", headers.get("retry-after", 1))))
            continue
        seconds = time.perf_counter() - start
        if status != 200:
            return Outcome(index, status, seconds, attempts, error=body.get("error", {}).get("message", str(body)))
        try:
            pixels = ",".join(pixel_hash(item["b64_json"]) for item in body["data"])
        except Exception as err:  # noqa: BLE001 - a broken image is a failed check, reported
            return Outcome(index, status, seconds, attempts, error=f"image does not decode: {err}")
        return Outcome(index, status, seconds, attempts, pixels, body["batch"]["images"])


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/stats", timeout=10) as r:
        return json.loads(r.read())


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def run_level(lt: LoadTest, concurrency: int, reference: dict[int, str], deadline: float) -> dict:
    """``requests_per_level`` requests from ``concurrency`` clients; each response checked."""
    indices = [i % lt.payloads for i in range(lt.requests_per_level)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda i: send(lt, i) if time.perf_counter() < deadline else
                                 Outcome(i, -1, 0.0, 0, error="not sent: the load test's time limit"), indices))
    wall = time.perf_counter() - start
    ok = [o for o in outcomes if o.status == 200 and o.error is None]
    mismatched = [o for o in ok if reference.get(o.index) is not None and o.pixels != reference[o.index]]
    latencies = [o.seconds for o in ok]
    return {
        "concurrency": concurrency, "requests": len(indices), "responses": len(outcomes),
        "ok": len(ok), "image_mismatches": len(mismatched),
        "errors": [{"status": o.status, "error": o.error} for o in outcomes if o.status != 200 or o.error],
        "retries_after_503": sum(o.attempts - 1 for o in outcomes),
        "wall_s": wall, "throughput_rps": len(ok) / wall if wall else None,
        "p50_s": quantile(latencies, 0.5), "p95_s": quantile(latencies, 0.95), "p99_s": quantile(latencies, 0.99),
        "mean_batch_images": statistics.fmean(o.batch_images for o in ok) if ok else None,
        "latencies_s": [round(v, 4) for v in latencies],
    }


REFUSED_GRACE_S = 3.0  # how long a refused connection is retried when the service should already be up


def wait_ready(url: str, timeout: float = 120.0, refused_grace: float | None = REFUSED_GRACE_S) -> dict:
    """The service's /readyz answer, waiting up to ``timeout`` for it to become ready; a connection
    refused for ``refused_grace`` seconds (nothing listens there) fails at once (None: wait it out)."""
    start = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError) as err:
            waited = time.perf_counter() - start
            refused = isinstance(getattr(err, "reason", err), ConnectionRefusedError)
            if refused and refused_grace is not None and waited > refused_grace:
                raise RuntimeError(f"nothing listens at {url} (connection refused): start the service with "
                                   "amo-engine serve ..., or pass the --url it listens at") from None
            if waited > timeout:
                raise TimeoutError(f"{url}/readyz did not answer ready within {timeout:g} s: is the service "
                                   "running? (amo-engine serve ...)") from None
            time.sleep(0.5)


def kill_one_replica() -> int:
    """SIGKILL one renderer replica's process (this process must be the Ray driver that started the
    service); returns its pid."""
    from ray import serve

    pid = serve.get_deployment_handle("renderer", app_name="amo-engine").describe.remote().result()["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def replica_timeline(killed_at: float, replicas: int, timeout: float = 120.0) -> tuple[float | None, float | None]:
    """Seconds from the kill until Serve counts fewer running renderer replicas (the death noticed),
    and until it counts all of them running again (recovered); None where that did not happen
    within ``timeout``."""
    from ray import serve

    def running() -> int:
        status = serve.status().applications["amo-engine"].deployments["renderer"]
        return status.replica_states.get("RUNNING", 0) if status.status == "HEALTHY" else -1

    noticed = None
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        now = running()
        if noticed is None and now < replicas:
            noticed = time.perf_counter() - killed_at
        elif noticed is not None and now == replicas:
            return noticed, time.perf_counter() - killed_at
        time.sleep(0.1)
    return noticed, None


def replica_fault(replicas: int):
    """The fault ``run_fault`` injects by default: SIGKILL one renderer replica, then Serve's timeline."""
    def fault() -> dict:
        killed_at = time.perf_counter()
        pid = kill_one_replica()
        noticed, recovery = replica_timeline(killed_at, replicas)
        return {"killed_pid": pid, "noticed_s": noticed, "recovery_s": recovery}
    return fault


def node_fault(cluster, replicas: int, timeout: float = 180.0):
    """Kill the cluster's last worker node whole (raylet, agents, replicas: every process of it);
    once Ray marks the node dead, start a worker node again; wait until Serve runs every replica.
    Times are from the kill: ``noticed_s`` (Serve counts fewer running replicas), ``node_dead_s``
    (Ray marks the node dead), ``node_back_s`` (the new node joined), ``recovery_s`` (every replica
    running again, one of them on the new node)."""
    from ray import serve

    def running() -> int:
        return serve.status().applications["amo-engine"].deployments["renderer"].replica_states.get("RUNNING", 0)

    def fault() -> dict:
        node = cluster.nodes[-1]
        before = cluster.replicas_by_node()
        killed_at = time.perf_counter()
        processes = cluster.kill(node)
        since = (lambda: time.perf_counter() - killed_at)
        times = {"noticed_s": None, "node_dead_s": None, "node_back_s": None, "recovery_s": None}
        new = None
        while since() < timeout:
            if times["noticed_s"] is None and running() < replicas:
                times["noticed_s"] = since()
            if times["node_dead_s"] is None and cluster.node_dead(node):
                times["node_dead_s"] = since()
                new = cluster.add_worker()
                times["node_back_s"] = since()
            if new is not None and running() == replicas and new.node_id[:8] in cluster.replicas_by_node():
                times["recovery_s"] = since()
                break
            time.sleep(0.1)
        after = cluster.replicas_by_node()
        return {"killed_node": node.node_id[:8], "processes_killed": processes, "replicas_by_node_before": before,
                "replicas_by_node_after": after, **times}
    return fault


def run_fault(lt: LoadTest, concurrency: int, replicas: int, reference: dict[int, str], deadline: float,
              fault=None) -> dict:
    """``concurrency`` clients send without pause; ``kill_replica_after_s`` in, ``fault`` runs (default:
    one replica killed) and returns when the service has recovered; the clients go on two more
    seconds, then stop. Every request sent gets one checked outcome (the client times out after
    ``timeout_s``: none hangs)."""
    stop, lock, outcomes = threading.Event(), threading.Lock(), []

    def client(first: int) -> None:
        i = first
        while not stop.is_set() and time.perf_counter() < deadline:
            outcome = send(lt, i % lt.payloads)
            with lock:
                outcomes.append(outcome)
            i += concurrency

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(lt.kill_replica_after_s)
    timeline = (fault or replica_fault(replicas))()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(lt.timeout_s + 10)
    ok = [o for o in outcomes if o.status == 200 and o.error is None]
    return {"concurrency": concurrency, **timeline, "gateway": stats(lt.url), "requests": len(outcomes),
            "ok": len(ok), "image_mismatches": sum(reference.get(o.index) != o.pixels for o in ok),
            "errors": [{"status": o.status, "error": o.error} for o in outcomes if o.status != 200 or o.error],
            "retries_after_503": sum(o.attempts - 1 for o in outcomes),
            "max_latency_s": max((o.seconds for o in outcomes), default=None),
            "hung": sum(t.is_alive() for t in threads)}


def references(lt: LoadTest) -> dict[int, str]:
    """Each payload's image alone (one request in flight), once the service is ready: what every
    later response to it must equal."""
    wait_ready(lt.url, refused_grace=None if lt.started_here else REFUSED_GRACE_S)
    reference = {}
    for i in range(lt.payloads):
        outcome = send(lt, i)
        if outcome.status != 200 or outcome.error:
            raise RuntimeError(f"the reference request {i} failed: {outcome.status} {outcome.error}")
        reference[i] = outcome.pixels
    return reference


def run(lt: LoadTest, replicas: int = 1, fault=None) -> dict:
    """Reference images (each payload alone), each concurrency level, then (if asked) the replica kill."""
    deadline = time.perf_counter() + lt.max_seconds
    info = wait_ready(lt.url, refused_grace=None if lt.started_here else REFUSED_GRACE_S)
    reference = references(lt)
    levels = [run_level(lt, concurrency, reference, deadline) for concurrency in lt.concurrency]
    result = {"service": info, "steps": lt.steps, "sampler": lt.sampler, "payloads": lt.payloads, "levels": levels}
    if lt.kill_replica_after_s is not None:
        result["kill"] = run_fault(lt, max(lt.concurrency), replicas, reference, deadline, fault)
    return result


def table(result: dict) -> str:
    lines = ["| concurrency | requests | ok | image mismatches | errors | throughput req/s | p50 s | p95 s | p99 s | "
             "mean batch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for lv in result["levels"]:
        f = (lambda v: "—" if v is None else f"{v:.3f}")
        lines.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['ok']} | {lv['image_mismatches']} | "
                     f"{len(lv['errors'])} | {f(lv['throughput_rps'])} | {f(lv['p50_s'])} | {f(lv['p95_s'])} | "
                     f"{f(lv['p99_s'])} | {f(lv['mean_batch_images'])} |")
    return "\n".join(lines)
