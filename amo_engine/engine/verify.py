"""Parity of an engine against the eager backbone on the same feeds (used by inspect --verify and
the conformance tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from amo_engine.engine.backends import open_backend
from amo_engine.engine.folder import Engine, open_engine
from amo_engine.model.inputs import sample_feeds


@dataclass(frozen=True)
class ParityGate:
    """Engine-vs-eager gates for one engine dtype: absolute for float32, shape-of-error for halves."""

    velocity_max_abs: float | None = None
    attn_max_abs: float | None = None
    velocity_cosine: float | None = None  # at least
    velocity_rel: float | None = None  # ||got - want|| / ||want|| at most
    attn_cosine: float | None = None  # at least
    group_attn_max_abs: float | None = None  # modulation engines' entity-group maps (gated like attn)
    group_attn_cosine: float | None = None


PARITY_GATES = {
    "float32": ParityGate(velocity_max_abs=1e-4, attn_max_abs=1e-6, group_attn_max_abs=1e-6),
    "float16": ParityGate(velocity_cosine=0.999, velocity_rel=0.03, attn_cosine=0.999, group_attn_cosine=0.999),
    "bfloat16": ParityGate(velocity_cosine=0.995, velocity_rel=0.08, attn_cosine=0.995, group_attn_cosine=0.995),
}


def judge_parity(p: dict, dtype: str) -> tuple[bool, str]:
    """(pass, one line of measured value vs gate for each gated quantity) for an engine of ``dtype``."""
    gate = PARITY_GATES[dtype]
    checks, ok = [], True
    for name, limit in vars(gate).items():
        if limit is None or name not in p:  # group_attn: modulation engines only
            continue
        at_least = name.endswith("cosine")
        good = p[name] >= limit if at_least else p[name] <= limit
        ok &= good
        checks.append(f"{name.replace('_', ' ')} {p[name]:.6g} ({'>=' if at_least else '<='} {limit:g})")
    return ok, ", ".join(checks)


def engine_parity(model, engine: Engine | Path | str, kind: str = "ort", device: str = "cpu", seed: int = 0) -> dict:
    """Max abs differences (velocity, attn) and velocity cosine between ``kind`` and eager."""
    if not isinstance(engine, Engine):
        engine = open_engine(engine, model)
    with open_backend(kind, engine, model, device=device) as backend, \
            open_backend("eager", model=model, hook=engine.hook) as eager:
        feeds = sample_feeds(engine.spec, device, seed)
        want = {k: v.clone() for k, v in eager(feeds).items()}
        got = backend(feeds)
        v_want, v_got = want["velocity"].float().flatten(), got["velocity"].float().flatten()
        a_want, a_got = want["attn"].float().flatten(), got["attn"].float().flatten()
        cos = torch.nn.functional.cosine_similarity
        out = {
            "backend": kind,
            "velocity_max_abs": float((v_got - v_want).abs().max()),
            "attn_max_abs": float((a_got - a_want).abs().max()),
            "velocity_cosine": float(cos(v_got, v_want, dim=0)),
            "velocity_rel": float((v_got - v_want).norm() / v_want.norm().clamp(min=1e-30)),
            "attn_cosine": float(cos(a_got, a_want, dim=0)),
        }
        if "group_attn" in want:
            g_want, g_got = want["group_attn"].float().flatten(), got["group_attn"].float().flatten()
            out["group_attn_max_abs"] = float((g_got - g_want).abs().max())
            out["group_attn_cosine"] = float(cos(g_got, g_want, dim=0))
        return out



STAGE_MAX_ABS = {"float32": 1e-4}  # stage outputs, ORT vs eager; half-precision stages are reported, not gated


def stage_parity(model, engine: Engine) -> dict[str, float]:
    """Max abs difference over the outputs of each exported stage (prompt encoders, VAE decoder),
    ONNX Runtime against the eager module on the same feeds."""
    from amo_engine.engine.backends.ort import OrtBackend
    from amo_engine.model.stages import pipeline_stages

    m = engine.manifest
    eager = pipeline_stages(model.pipe, m.images_per_call, m.height, m.width, m.max_sequence_length)
    errors = {}
    for name in engine.stages:
        module, _ = eager[name]
        spec = engine.stage_spec(name)
        feeds = sample_feeds(spec, "cpu")
        with OrtBackend(engine, stage=name) as backend, torch.no_grad():
            got = backend(feeds)
            want = module(**feeds)
            want = want if isinstance(want, tuple) else (want,)
            errors[name] = max(float((got[n].float() - w.float()).abs().max()) for n, w in zip(spec.output_names, want))
    return errors
