"""The default CPU engine of a machine: ONNX Runtime, OpenVINO (where installed) or AOTInductor (on an
engine exported with ``--aoti`` for the CPU), whichever runs the engine's backbone call faster here.
Measured on request (``amo-engine inspect ENGINE --measure``: interleaved calls, medians, under the
bench's contention watch) and recorded in the manifest with the CPU it ran on — never when the watch saw
other processes on the cores the calls need, since a busy machine can invert the order (seen:
"ort 52 ms, aoti 1285 ms" under load). ``--backend auto`` then picks it on that CPU. Machines
differ (the fp32 GEMM rate alone varies 3x between the CPUs this project runs on), so on another
CPU, or with no measurement, ``auto`` says so and runs ORT.
"""

from __future__ import annotations

from amo_engine.engine.manifest import DefaultBackend, Manifest

ROUNDS = 5
FALLBACK = "ort"


def machine() -> str:
    """The CPU a measurement belongs to: vendor, family, model, name and core count."""
    from amo_engine.timing import cpu_facts

    f = cpu_facts()
    return f"{f['vendor']} family {f['family']} model {f['model']} ({f['name']}), {f['cores']} cores"


class BusyMachine(RuntimeError):
    """The contention watch saw other work on the cores a measurement needs: nothing recorded."""


def candidates(engine) -> list[str]:
    """The CPU runtimes that can run ``engine`` here: ORT always, OpenVINO where it is installed,
    AOTInductor where the engine holds a CPU package."""
    import importlib.util

    found = ["ort"]
    if importlib.util.find_spec("openvino") is not None:
        found.append("openvino")
    if engine.manifest.aoti is not None and engine.manifest.aoti.device == "cpu":
        found.append("aoti")
    return found


def measure(engine, model, rounds: int = ROUNDS) -> DefaultBackend:
    """Time every candidate runtime on ``engine`` round-robin under the contention watch; the fastest
    wins. Raises BusyMachine when the machine was busy (nothing to record)."""
    import contextlib

    from amo_engine.engine.backends import open_backend
    from amo_engine import timing
    from amo_engine.model.inputs import sample_feeds
    from amo_engine.threads import usable_cpus

    feeds = sample_feeds(engine.spec, "cpu")
    watch = timing.ContentionWatch(threads=usable_cpus())
    watch.sample_before()
    with contextlib.ExitStack() as stack:
        backends = {kind: stack.enter_context(open_backend(kind, engine, model)) for kind in candidates(engine)}
        timed = timing.interleaved({k: (lambda b=b: b(feeds)) for k, b in backends.items()}, rounds, watch, warmup=1)
    verdict = watch.verdict()
    p50_ms = {k: 1000 * v.summary(set())["p50"] for k, v in timed.items()}
    if verdict["contended"]:
        raise BusyMachine(f"the machine was busy while measuring ({'; '.join(verdict['reasons'])}; "
                          + ", ".join(f"{k} {v:.1f} ms" for k, v in p50_ms.items())
                          + "): nothing recorded; rerun when it is idle")
    return DefaultBackend(min(p50_ms, key=p50_ms.get), p50_ms, rounds, machine())


def resolve(manifest: Manifest) -> tuple[str, str | None]:
    """(backend, a note or None) for ``--backend auto`` on this machine."""
    record = manifest.default_backend
    if record is None:
        return FALLBACK, (f"--backend auto: the engine holds no measured default (measure one with: amo-engine inspect "
                          f"ENGINE --measure, with OpenVINO installed or on an engine exported with --aoti); running {FALLBACK}")
    if record.machine != machine():
        return FALLBACK, (f"--backend auto: the engine's default ({record.backend}) was measured on "
                          f"{record.machine}, not this CPU; running {FALLBACK} (measure here with: amo-engine inspect ENGINE "
                          "--measure)")
    return record.backend, None
