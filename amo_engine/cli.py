"""amo-engine command line: subcommands map 1:1 onto the library's config dataclasses."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import __version__

EPILOG = """\
examples:
  amo-engine generate --model tiny-sd3 --prompt "A sign that says 'OPEN'" --out out.png
  amo-engine generate --model /models/stable-diffusion-3-medium-diffusers --sampler amo --c 2 \\
      --steps 28 --seed 10 --out sign.png --save-attn sign_attn.png
  amo-engine generate --model black-forest-labs/FLUX.1-dev --dtype bf16 --device cuda ...

Put the text to render in quotes inside the prompt ('...', "...", or curly quotes): AMO
overshoots harder where that text attends. Without quoted text, --sampler amo runs overshoot.
"""


def _blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks takes comma-separated block indices, e.g. 0,1,2; got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-sd3",
                   help="preset (tiny-sd3, tiny-flux), a diffusers pipeline folder, or an HF model id already in "
                        "the local cache (default: tiny-sd3, built offline on first use)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="weights/compute dtype (CPU: fp32; FLUX on GPU: bf16)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where presets are built (default: $XDG_CACHE_HOME/amo-engine or ~/.cache/amo-engine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amo-engine",
        description="Text-to-image with better rendered text: AMO sampler on SD3 / FLUX transformers, "
                    "eager or exported engines.",
    )
    parser.add_argument("--version", action="version", version=f"amo-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate images (Euler / Overshoot / AMO)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(g)
    g.add_argument("--prompt", action="append", required=True,
                   help="prompt; repeat for a batch. Quote the text to render: \"a sign 'OPEN'\"")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (SD3 classifier-free guidance)")
    g.add_argument("--sampler", default="amo", choices=["euler", "overshoot", "amo"],
                   help="euler: plain flow ODE; overshoot: step past the target and renoise back (strength --c); "
                        "amo: overshoot scaled per image patch by the quoted text's attention (default)")
    g.add_argument("--c", type=float, default=2.0, help="overshoot strength c >= 0 (0 = Euler; default 2.0)")
    g.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    g.add_argument("--seed", type=int, default=10, help="seed for the initial noise and the renoising (default 10)")
    g.add_argument("--guidance", type=float, default=None, help="SD3: CFG scale (default 7.0); FLUX: guidance input (default 3.5)")
    g.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    g.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (default: SD3 256, FLUX 512; presets 64)")
    g.add_argument("--blocks", type=_blocks, default=None,
                   help="joint / double-stream blocks that feed AMO's map, e.g. 0,1,2 (default: all)")
    g.add_argument("--max-span-tokens", type=int, default=64, help="span rows the score branch reads (default 64)")
    g.add_argument("--backend", default="eager", choices=["eager", "ort", "trt"], help="where the transformer runs")
    g.add_argument("--engine", type=Path, default=None, help="engine folder for --backend ort/trt")
    g.add_argument("--out", type=Path, default=Path("out.png"),
                   help="output PNG; a batch writes out.png, out_1.png, ... (default out.png)")
    g.add_argument("--save-attn", type=Path, default=None, help="also save AMO's span map as a heat-map overlay PNG")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("export", help="export the transformer (+ AMO score output) to an ONNX engine folder")
    _add_model_args(e)
    e.add_argument("--out", type=Path, required=True, help="engine folder to write, e.g. engines/tiny-sd3")
    e.add_argument("--height", type=int, default=None, help="image height the engine serves (default: the model's)")
    e.add_argument("--width", type=int, default=None, help="image width the engine serves (default: the model's)")
    e.add_argument("--batch", type=int, default=1, help="images per call (SD3 adds the CFG rows; default 1)")
    e.add_argument("--no-cfg", action="store_true", help="SD3: no [uncond ; cond] rows (guidance <= 1)")
    e.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (default: the model's)")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; TensorRT 10 parses <= 20)")
    e.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"], help="torch.onnx exporter")
    e.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (default: static shapes)")
    e.add_argument("--no-fold", action="store_true", help="skip constant folding")
    e.add_argument("--blocks", type=_blocks, default=None, help="blocks with the score branch (default: all)")
    e.add_argument("--max-span-tokens", type=int, default=64, help="span rows the score branch reads (default 64)")

    b = sub.add_parser("build", help="build a TensorRT engine (model.plan) for an exported folder (NVIDIA GPU)")
    b.add_argument("engine", type=Path, help="engine folder written by amo-engine export")
    b.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"], help="engine precision")
    b.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5 (default 3)")
    b.add_argument("--weakly-typed", action="store_true", help="let TensorRT pick precisions (default: strongly typed)")
    b.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to read and update")

    i = sub.add_parser("inspect", help="manifest, I/O table, op census, TensorRT compatibility; --verify runs parity")
    i.add_argument("engine", type=Path, help="engine folder")
    i.add_argument("--verify", action="store_true", help="run the engine and eager on the same random feeds")
    i.add_argument("--backend", default="ort", choices=["ort", "trt"], help="runtime for --verify (default ort)")
    i.add_argument("--model", default=None, help="model for --verify (default: the one in the manifest)")
    i.add_argument("--device", default="cpu", help="device for --verify")
    i.add_argument("--cache-dir", type=Path, default=None, help="preset cache (see generate)")

    be = sub.add_parser("bench", help="latency of eager / torch.compile / reference AMO / ORT arms, side by side")
    be.add_argument("--config", default="medium-sd3", choices=["tiny-sd3", "tiny-flux", "medium-sd3", "medium-flux"])
    be.add_argument("--calls", type=int, default=10, help="timed backbone calls per arm (interleaved; default 10)")
    be.add_argument("--loops", type=int, default=3, help="timed denoise loops per arm (default 3)")
    be.add_argument("--steps", type=int, default=8, help="steps per loop (default 8)")
    be.add_argument("--no-compile", action="store_true", help="skip the torch.compile arm")
    be.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="where JSON lines, table and plot go")
    be.add_argument("--cache-dir", type=Path, default=None, help="preset cache (tiny configs)")
    return parser


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _numbered(path: Path, i: int) -> Path:
    return path if i == 0 else path.with_name(f"{path.stem}_{i}{path.suffix}")


def cmd_generate(args: argparse.Namespace) -> int:
    from .backbone import ScoreConfig
    from .models import load_model
    from .pipeline import AmoPipeline, GenerateConfig, save_png
    from .plots import save_attention_overlay

    model = load_model(args.model, args.dtype, args.device, args.cache_dir)
    score = ScoreConfig(hooked_blocks=args.blocks, max_span_tokens=args.max_span_tokens)
    backend = None
    if args.backend != "eager":
        from .backends import load_backend

        if args.engine is None:
            raise ValueError(f"--backend {args.backend} needs --engine engines/NAME (see amo-engine export)")
        backend = load_backend(args.backend, args.engine, device=args.device, model=model)
    pipe = AmoPipeline(model, score, backend)
    cfg = GenerateConfig(
        prompts=args.prompt,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        c=args.c,
        seed=args.seed,
        num_images_per_prompt=args.num_images,
        max_sequence_length=args.max_sequence_length,
        progress=not args.quiet,
    )
    result = pipe(cfg)
    for i, image in enumerate(result.images):
        save_png(image, _numbered(args.out, i))
    if args.save_attn is not None and result.attn_map is not None:
        for i, image in enumerate(result.images):
            save_attention_overlay(image, result.attn_map[i], _numbered(args.save_attn, i))
    paths = ", ".join(str(_numbered(args.out, i)) for i in range(len(result.images)))
    print(
        f"{result.sampler} on {model.family} ({args.backend}): {result.steps} steps, "
        f"{1000 * result.seconds_per_step:.1f} ms/step, loop {result.loop_seconds:.2f} s -> {paths}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .backbone import ScoreConfig
    from .models import load_model
    from .onnx_export import ExportConfig, export_engine

    model = load_model(args.model, args.dtype, args.device, args.cache_dir)
    cfg = ExportConfig(
        out=args.out, batch=args.batch, height=args.height, width=args.width, cfg_rows=not args.no_cfg,
        max_sequence_length=args.max_sequence_length, opset=args.opset, exporter=args.exporter,
        dynamic_batch=args.dynamic_batch, fold_constants=not args.no_fold,
    )
    export_engine(model, cfg, ScoreConfig(args.blocks, args.max_span_tokens))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .backends import BackendUnavailable

    try:
        from .trt_build import BuildConfig, build_plan

        manifest = build_plan(BuildConfig(args.engine, args.precision, args.opt_level, not args.weakly_typed,
                                          args.timing_cache))
    except BackendUnavailable as err:  # no TensorRT / no GPU: one line, not a traceback
        print(f"amo-engine build: {err}", file=sys.stderr)
        return 3
    t = manifest["trt"]
    print(f"built {args.engine / 'model.plan'} ({t['precision']}, TensorRT {t['version']}, {t['gpu']}) in {t['build_s']:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .engine import manifest_spec, read_manifest

    manifest = read_manifest(args.engine)
    spec = manifest_spec(manifest)
    g = manifest["graph"]
    print(f"engine {args.engine}: {manifest['family']} from {manifest['model']!r}, {manifest['dtype']}, "
          f"{manifest['height']}x{manifest['width']}, rows {manifest['rows']}, hooked blocks {manifest['hooked_blocks']}")
    o = manifest["onnx"]
    files = ", ".join(f"{name} ({rec['bytes'] / 1e6:.1f} MB)" for name, rec in manifest["files"].items())
    print(f"onnx: opset {o['opset']}, exporter {o['exporter']}, folded {o['folded']}; files: {files}")
    print("\nI/O")
    for kind, tensors in (("in ", spec.inputs), ("out", spec.outputs)):
        for t in tensors:
            print(f"  {kind} {t.name:24s} {t.dtype:9s} {list(spec.shape(t.name))}")
    print("\nop census: " + ", ".join(f"{k} {v}" for k, v in g["census"].items()))
    print(f"\nTensorRT ONNX parser ({g['trt_table']}): {'compatible' if g['trt_ok'] else 'NOT compatible'}"
          + (f"; unsupported {g['unsupported_ops']}" if g["unsupported_ops"] else "")
          + (f"; float64 {g['float64'][:3]}" if g["float64"] else ""))
    for op, note in g["restrictions"].items():
        print(f"  {op}: {note}")
    print(f"attention fusion: {'kept' if g['fusion_ok'] else 'BROKEN'} ({g['main_softmax']} main softmax -> MatMul only, "
          f"{g['score_softmax']} score-branch softmax)")
    if "trt" in manifest:
        print(f"TensorRT plan: {manifest['trt']}")
    if not args.verify:
        return 0
    from .models import load_model
    from .verify import engine_parity

    model = load_model(args.model or manifest["model"], manifest["dtype"], args.device, args.cache_dir)
    p = engine_parity(model, args.engine, args.backend, args.device)
    ok = p["velocity_max_abs"] <= VERIFY_VELOCITY_TOL and p["attn_max_abs"] <= VERIFY_ATTN_TOL
    print(f"\nverify ({args.backend} vs eager): velocity max abs {p['velocity_max_abs']:.2e} "
          f"(<= {VERIFY_VELOCITY_TOL:g}), attn max abs {p['attn_max_abs']:.2e} (<= {VERIFY_ATTN_TOL:g}), "
          f"velocity cosine {p['velocity_cosine']:.6f}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

    run_bench(BenchConfig(args.config, args.calls, args.loops, args.steps, compile=not args.no_compile,
                          out_dir=args.out_dir, cache_dir=args.cache_dir))
    print(f"wrote {args.out_dir / args.config}.jsonl, .md and .png")
    return 0


VERIFY_VELOCITY_TOL = 1e-4  # fp32 engines; see README for fp16/bf16
VERIFY_ATTN_TOL = 1e-6

COMMANDS = {"generate": cmd_generate, "export": cmd_export, "build": cmd_build, "inspect": cmd_inspect, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    from .backends import BackendUnavailable

    args = build_parser().parse_args(argv)
    _quiet_libraries()
    warnings.simplefilter("default", UserWarning)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError, BackendUnavailable) as err:
        print(f"amo-engine {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
