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


COMMANDS = {"generate": cmd_generate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    warnings.simplefilter("default", UserWarning)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as err:
        print(f"amo-engine {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
