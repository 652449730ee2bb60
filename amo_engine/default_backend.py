"""The default CPU engine of a machine: ONNX Runtime or AOTInductor, whichever runs the engine's
backbone call faster here. Measured once when ``export --aoti`` writes both artifacts on the CPU
(interleaved calls, medians) and recorded in the manifest with the CPU it ran on;
``--backend auto`` then picks it on that CPU. Machines differ (the fp32 GEMM rate alone varies
3x between the CPUs this project runs on), so on another CPU ``auto`` says so and runs ORT.
"""

from __future__ import annotations

ROUNDS = 5
FALLBACK = "ort"


def machine() -> str:
    """The CPU a measurement belongs to: vendor, family, model, name and core count."""
    from .bench.harness import cpu_facts

    f = cpu_facts()
    return f"{f['vendor']} family {f['family']} model {f['model']} ({f['name']}), {f['cores']} cores"


def measure(engine, model, rounds: int = ROUNDS) -> dict:
    """Time ORT and AOTInductor on ``engine`` (both artifacts, CPU) round-robin; the faster one wins."""
    from .backends import open_backend
    from .bench import harness
    from .spec import sample_feeds

    feeds = sample_feeds(engine.spec, "cpu")
    with open_backend("ort", engine, model) as ort, open_backend("aoti", engine, model) as aoti:
        timed = harness.interleaved({"ort": lambda: ort(feeds), "aoti": lambda: aoti(feeds)}, rounds, warmup=1)
    p50_ms = {k: 1000 * v.summary(set())["p50"] for k, v in timed.items()}
    return {"backend": min(p50_ms, key=p50_ms.get), "p50_ms": p50_ms, "rounds": rounds, "machine": machine()}


def resolve(manifest) -> tuple[str, str | None]:
    """(backend, a note or None) for ``--backend auto`` on this machine."""
    record = manifest.get("default_backend")
    if record is None:
        return FALLBACK, (f"--backend auto: the engine holds no measured default (export it with --aoti on a CPU to "
                          f"measure one); running {FALLBACK}")
    if record["machine"] != machine():
        return FALLBACK, (f"--backend auto: the engine's default ({record['backend']}) was measured on "
                          f"{record['machine']}, not this CPU; running {FALLBACK} (re-export here to measure)")
    return record["backend"], None
