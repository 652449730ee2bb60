"""Latency benchmarks versus eager PyTorch, measured side by side in one run.

Arms share weights, feeds, steps and seed. Scopes: one backbone call (arms interleaved round-robin
so machine noise hits all alike) and the denoise loop (arms interleaved per round). Not yet:
end-to-end (encode + loop + decode) and per-arm peak memory (only the process peak is recorded).
Warm-ups are excluded; p50 is the headline, with mean, p90, min and raw samples. Results: JSON
lines (with the environment), a markdown table and a PNG plot.
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .backbone import ScoreConfig, make_backbone
from .engine import FORMAT_VERSION, MANIFEST, ONNX_FILE, file_records, write_json_atomic
from .onnx_export import ExportConfig, export_engine, sample_feeds
from .samplers import StepOut, sample_amo, sample_euler
from .schedules import flow_match_sigmas

CONFIGS = ("tiny-sd3", "tiny-flux", "medium-sd3", "medium-flux")


def medium_transformer(family: str):
    """~70 M-parameter random-init SD3 / FLUX architectures (one eager call ~0.3-1.5 s on 2 cores)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if family == "sd3":
        return SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, num_layers=8,
                                     attention_head_dim=64, num_attention_heads=8, joint_attention_dim=512,
                                     caption_projection_dim=512, pooled_projection_dim=256, out_channels=16,
                                     pos_embed_max_size=96).eval()
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8,
                                  attention_head_dim=64, num_attention_heads=8, joint_attention_dim=512,
                                  pooled_projection_dim=256, guidance_embeds=True, axes_dims_rope=(8, 28, 28)).eval()


# ---------------------------------------------------------------- reference-style AMO (the cost users pay today)


class ReferenceScoreProcessor:
    """As the official AMO release: explicit full softmax(QK^T) in the hooked block, the text->image
    quadrant summed over span rows, one map shared by the whole batch."""

    def __init__(self, family: str, sink: list, span_mask: torch.Tensor):
        self.family, self.sink, self.span_mask = family, sink, span_mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kw):
        from diffusers.models.embeddings import apply_rotary_emb

        n_img, n_txt = hidden_states.shape[1], encoder_hidden_states.shape[1]

        def proj(layer, x, norm):
            y = layer(x).unflatten(-1, (attn.heads, -1))  # [B, L, H, D]
            return norm(y) if norm is not None else y

        q_i, k_i, v_i = proj(attn.to_q, hidden_states, attn.norm_q), proj(attn.to_k, hidden_states, attn.norm_k), \
            proj(attn.to_v, hidden_states, None)
        q_t, k_t, v_t = proj(attn.add_q_proj, encoder_hidden_states, attn.norm_added_q), \
            proj(attn.add_k_proj, encoder_hidden_states, attn.norm_added_k), proj(attn.add_v_proj, encoder_hidden_states, None)
        first_img = self.family == "sd3"
        q = torch.cat([q_i, q_t] if first_img else [q_t, q_i], 1)
        k = torch.cat([k_i, k_t] if first_img else [k_t, k_i], 1)
        v = torch.cat([v_i, v_t] if first_img else [v_t, v_i], 1)
        if image_rotary_emb is not None:
            q, k = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1), apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, D]
        probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [B, H, L, L]
        out = probs @ v
        txt, img = (slice(n_img, None), slice(0, n_img)) if first_img else (slice(0, n_txt), slice(n_txt, None))
        quadrant = probs[:, :, txt, img]  # [B, H, T, N]
        self.sink.append((quadrant * self.span_mask[:, None, :, None]).sum(2).mean((0, 1)))  # one map per batch
        out = out.transpose(1, 2).flatten(2)
        t_out, i_out = (out[:, n_img:], out[:, :n_img]) if first_img else (out[:, :n_txt], out[:, n_txt:])
        i_out = attn.to_out[1](attn.to_out[0](i_out))
        if getattr(attn, "context_pre_only", False) and self.family == "sd3":
            return i_out, t_out
        return i_out, attn.to_add_out(t_out)


# ---------------------------------------------------------------- arms


@dataclass
class Arm:
    name: str
    call: Callable[[dict], tuple[torch.Tensor, torch.Tensor | None]]  # feeds -> (velocity, attn)
    sampler: str  # euler | amo


def _stock_call(stock, family):
    names = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")

    def call(feeds):
        with torch.inference_mode():
            return stock(**{k: v for k, v in feeds.items() if k in names}, return_dict=False)[0], None

    return call


def _reference_call(transformer, family, blocks):
    sink: list = []
    procs = []
    for i in blocks:
        p = ReferenceScoreProcessor(family, sink, None)
        transformer.transformer_blocks[i].attn.set_processor(p)
        procs.append(p)
    stock = _stock_call(transformer, family)

    def call(feeds):
        sink.clear()
        for p in procs:
            p.span_mask = feeds["span_mask"]
        v, _ = stock(feeds)
        shared = torch.stack(sink).mean(0)  # [N]: one map for the batch, as the official code
        return v, shared.expand(v.shape[0], -1)

    return call


def _backend_call(backend):
    def call(feeds):
        out = backend(feeds)
        return out["velocity"], out.get("attn")

    return call


def _export_stock_engine(stock, spec, folder: Path) -> None:
    """Engine folder for the stock transformer (no score branch, no attn output): prices the scores."""
    from .spec import IOSpec

    names = [t.name for t in spec.inputs if t.name != "span_mask"]

    class Stock(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args)), return_dict=False)[0]

    io = IOSpec(tuple(t for t in spec.inputs if t.name != "span_mask"), spec.outputs[:1], spec.dims)
    feeds = sample_feeds(io)
    folder.mkdir(parents=True, exist_ok=True)
    prog = torch.onnx.export(Stock(stock).eval(), tuple(feeds[n] for n in names), input_names=names,
                             output_names=["velocity"], opset_version=18, dynamo=True, verbose=False)
    prog.save(str(folder / ONNX_FILE))
    manifest = {"format": FORMAT_VERSION, "family": "stock", "io": io.to_json(), "onnx": {"file": ONNX_FILE},
                "files": file_records(folder)}
    write_json_atomic(folder / MANIFEST, manifest)


def _stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50": statistics.median(s), "mean": statistics.fmean(s), "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
            "min": s[0], "n": len(s), "samples": samples}


def _environment(config: str) -> dict:
    import diffusers
    import onnxruntime

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {"config": config, "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "git": rev, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def matmul_peak_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def forward_gflop(call, feeds) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call(feeds)
    return counter.get_total_flops() / 1e9


@dataclass
class BenchConfig:
    config: str = "medium-sd3"
    calls: int = 10  # timed backbone calls per arm
    loops: int = 3  # timed denoise loops per arm
    steps: int = 8
    warmup: int = 2
    compile: bool = True
    out_dir: Path = Path("bench/results")
    cache_dir: Path | None = None


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    if cfg.config not in CONFIGS:
        raise ValueError(f"unknown bench config {cfg.config!r}; choose one of {', '.join(CONFIGS)}")
    family = cfg.config.split("-")[1]
    if cfg.config.startswith("tiny"):
        from .models import load_model

        model = load_model(cfg.config, cache_dir=cfg.cache_dir)
        transformer, height, text_len = model.pipe.transformer, 128, 77 + 64 if family == "sd3" else 64
    else:
        model, transformer, height = None, medium_transformer(family), 512
        text_len = 77 + 77 if family == "sd3" else 77
    stock = copy.deepcopy(transformer)
    reference = copy.deepcopy(transformer)
    backbone = make_backbone(transformer, ScoreConfig())
    spec = backbone.io_spec(1, height, height, text_len)
    feeds = sample_feeds(spec)
    env = _environment(cfg.config)
    log(f"bench {cfg.config}: {sum(p.numel() for p in stock.parameters()) / 1e6:.1f} M params, "
        f"{spec.dims['image_tokens']} image + {text_len} text tokens, batch 1, fp32, {env['threads']} threads")

    arms = [Arm("eager-stock-euler", _stock_call(stock, family), "euler")]
    notes = []
    if cfg.compile:
        try:
            compiled = torch.compile(copy.deepcopy(stock))
            call = _stock_call(compiled, family)
            t = time.perf_counter()
            call(feeds)
            notes.append(f"torch.compile warm-up {time.perf_counter() - t:.1f} s")
            arms.append(Arm("eager-compile-euler", call, "euler"))
        except Exception as err:  # compile support varies by platform
            notes.append(f"torch.compile skipped: {type(err).__name__}: {str(err)[:120]}")
    hooked = _backend_call(_eager(backbone, spec))
    arms.append(Arm("eager-hook-amo", hooked, "amo"))
    arms.append(Arm("reference-amo", _reference_call(reference, family, backbone.hooked_blocks), "amo"))

    from .backends.ort import OrtBackend

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_engine(model if model is not None else _Shim(transformer, family),
                      ExportConfig(out=Path(tmp) / "amo", height=height, width=height,
                                   max_sequence_length=text_len - 77 if family == "sd3" else text_len, cfg_rows=False,
                                   log=False))
        export_s = time.perf_counter() - t
        _export_stock_engine(stock, spec, Path(tmp) / "stock")
        ort_amo = OrtBackend(Path(tmp) / "amo")
        ort_stock = OrtBackend(Path(tmp) / "stock")
        arms += [Arm("ort-euler", _backend_call(ort_amo), "euler"), Arm("ort-amo", _backend_call(ort_amo), "amo"),
                 Arm("ort-noattn-euler", _backend_call(ort_stock), "euler")]
        notes.append(f"ONNX export {export_s:.1f} s")
        notes.append("tensorrt arms skipped: no NVIDIA GPU / TensorRT on this machine")
        results = _measure(arms, feeds, spec, family, cfg, log)
    peak = matmul_peak_gflops()
    gflop = forward_gflop(_stock_call(stock, family), feeds)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = results["eager-stock-euler"]
    rows = []
    for arm in arms:
        r = results[arm.name]
        call_p50 = r["call"]["p50"]
        rows.append({
            "env": env, "arm": arm.name, "sampler": arm.sampler, "call_s": r["call"], "loop_s": r["loop"],
            "steps": cfg.steps, "speedup_call_vs_eager": base["call"]["p50"] / call_p50,
            "speedup_loop_vs_eager": base["loop"]["p50"] / r["loop"]["p50"],
            "gflop_per_call": gflop, "matmul_peak_gflops": peak,
            "utilisation": gflop / call_p50 / peak, "process_peak_rss_mb": rss_mb, "notes": notes,
        })
    _write(rows, cfg, results)
    return rows


class _Shim:
    """A LoadedModel-like view of a bare transformer (medium configs have no pipeline)."""

    def __init__(self, transformer, family):
        class P:
            pass

        self.pipe = P()
        self.pipe.transformer = transformer
        self.pipe.tokenizer_max_length = 77
        self.family, self.source, self.folder = family, f"medium-{family}", None
        self.default_size = (512, 512)
        self.max_sequence_length = 77


def _eager(backbone, spec):
    from .backends.eager import EagerBackend

    return EagerBackend(backbone, spec)


def _measure(arms, feeds, spec, family, cfg, log) -> dict:
    results = {a.name: {"call": [], "loop": []} for a in arms}
    for _ in range(cfg.warmup):
        for a in arms:
            a.call(feeds)
    for i in range(cfg.calls):  # interleaved: every round runs every arm once
        for a in arms:
            t = time.perf_counter()
            a.call(feeds)
            results[a.name]["call"].append(time.perf_counter() - t)
    sigmas = flow_match_sigmas({"shift": 3.0}, cfg.steps)
    scale = 1000.0 if family == "sd3" else 1.0
    for _ in range(cfg.loops):
        for a in arms:
            f = {k: v.clone() for k, v in feeds.items()}

            def fn(x, sigma, f=f, a=a):
                f["hidden_states"].copy_(x)
                f["timestep"].fill_(sigma * scale)
                v, attn = a.call(f)
                return StepOut(v, attn)

            x = torch.randn(spec.shape("hidden_states"), generator=torch.Generator().manual_seed(0))
            t = time.perf_counter()
            if a.sampler == "amo":
                sample_amo(fn, x, sigmas, 2.0, torch.Generator().manual_seed(1), patch_size=2)
            else:
                sample_euler(fn, x, sigmas)
            results[a.name]["loop"].append(time.perf_counter() - t)
    for a in arms:
        results[a.name] = {k: _stats(v) for k, v in results[a.name].items()}
        log(f"  {a.name:22s} call p50 {1000 * results[a.name]['call']['p50']:8.1f} ms   "
            f"loop p50 {results[a.name]['loop']['p50']:7.2f} s")
    return results


def _write(rows: list[dict], cfg: BenchConfig, results: dict) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / cfg.config
    with open(f"{stem}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    by = {r["arm"]: r for r in rows}

    def ratio(a, b):
        return by[a]["call_s"]["p50"] / by[b]["call_s"]["p50"] if a in by and b in by else float("nan")

    lines = [f"### {cfg.config} ({rows[0]['env']['cpu']}, {rows[0]['env']['threads']} threads, {rows[0]['env']['time']})", "",
             "| arm | call p50 ms | mean | p90 | min | loop p50 s (" + str(cfg.steps) + " steps) | x eager (call) | x eager (loop) | util |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["call_s"]
        lines.append(f"| {r['arm']} | {1000 * c['p50']:.1f} | {1000 * c['mean']:.1f} | {1000 * c['p90']:.1f} | "
                     f"{1000 * c['min']:.1f} | {r['loop_s']['p50']:.2f} | {r['speedup_call_vs_eager']:.2f} | "
                     f"{r['speedup_loop_vs_eager']:.2f} | {r['utilisation']:.2f} |")
    loop = {r["arm"]: r["loop_s"]["p50"] for r in rows}
    lines += ["", f"- ORT AMO loop / ORT Euler loop: {loop['ort-amo'] / loop['ort-euler']:.3f} (goal <= 1.03)",
              f"- ORT with attn / without (call): {ratio('ort-euler', 'ort-noattn-euler'):.3f} (goal <= 1.03)",
              f"- reference-style AMO / our eager AMO (call): {ratio('reference-amo', 'eager-hook-amo'):.2f}",
              f"- ORT vs torch.compile (call): {ratio('eager-compile-euler', 'ort-euler'):.2f}x",
              f"- forward {rows[0]['gflop_per_call']:.1f} GFLOP; measured fp32 matmul peak {rows[0]['matmul_peak_gflops']:.0f} GFLOP/s",
              f"- process peak RSS {rows[0]['process_peak_rss_mb']:.0f} MB (whole run); notes: {'; '.join(rows[0]['notes'])}", ""]
    Path(f"{stem}.md").write_text("\n".join(lines))
    _plot(rows, f"{stem}.png", cfg.config)


def _plot(rows, path, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["arm"] for r in rows]
    for i, r in enumerate(rows):
        ax.scatter([1000 * s for s in r["call_s"]["samples"]], [i] * r["call_s"]["n"], s=12, alpha=0.6)
        ax.plot([1000 * r["call_s"]["p50"]] * 2, [i - 0.3, i + 0.3], color="k")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("one backbone call (ms): samples and p50")
    ax.set_title(f"amo-engine bench: {title}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
