"""amo-engine command line: ``main`` parses (``parser.py``), judges the options before anything heavy
loads (``checks.py``), then runs the subcommand (``commands.py``); one line for every refusal."""

from __future__ import annotations

import sys
import warnings

from amo_engine.cli.checks import (
    check_edit_args,
    check_eval_args,
    check_finetune_args,
    check_generate_args,
    check_localize_args,
    check_model_name,
    check_serve_args,
)
from amo_engine.cli.commands import (
    _quiet_libraries,
    cmd_bench,
    cmd_build,
    cmd_edit,
    cmd_eval,
    cmd_export,
    cmd_finetune,
    cmd_lora_study,
    cmd_generate,
    cmd_inspect,
    cmd_loadtest,
    cmd_localize,
    cmd_serve,
    cmd_train_glyph,
)
from amo_engine.cli.parser import build_parser

__all__ = ["build_parser", "main"]

COMMANDS = {"generate": cmd_generate, "edit": cmd_edit, "localize": cmd_localize, "export": cmd_export, "build": cmd_build, "inspect": cmd_inspect, "bench": cmd_bench,
            "train-glyph": cmd_train_glyph, "finetune": cmd_finetune, "lora-study": cmd_lora_study, "eval": cmd_eval, "serve": cmd_serve, "loadtest": cmd_loadtest}


PRECHECKS = {"generate": check_generate_args, "edit": check_edit_args, "localize": check_localize_args,
             "export": check_model_name, "finetune": check_finetune_args,
             "eval": check_eval_args, "serve": check_serve_args, "loadtest": check_serve_args}


def _plain_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"amo-engine: warning: {message}\n"


def _unquoted_prompt(argv: list[str], extras: list[str]) -> str | None:
    """The fix for a prompt typed without quotes (its words after the first land in ``extras``):
    the whole prompt quoted, its last word quoted inside as the text to render when nothing is."""
    if "--prompt" not in argv:
        return None
    at = argv.index("--prompt") + 1
    words = []
    for word in argv[at:]:
        if word.startswith("--") or (words and word not in extras):
            break
        words.append(word)
    if len(words) < 2:
        return None
    if not any(q in " ".join(words) for q in "'\"‘’“”"):
        words[-1] = f"'{words[-1]}'"
    return f'--prompt "{" ".join(words)}"'


RESUMABLE = {"eval", "train-glyph", "finetune", "lora-study"}  # commands that keep what they finished and resume from it


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        fix = _unquoted_prompt(argv, extras)
        if fix is None:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        print(f"amo-engine {args.command}: error: the prompt has spaces: quote it whole, with the text to render "
              f"in quotes inside it: {fix}", file=sys.stderr)
        return 2
    warnings.formatwarning = _plain_warning  # one line per warning, no source-line noise
    warnings.simplefilter("default", UserWarning)
    try:
        try:
            if args.command in PRECHECKS:
                PRECHECKS[args.command](args)  # before diffusers is imported or any model loaded
            from amo_engine.engine.backends import BackendUnavailable
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"amo-engine {args.command}: error: {err}", file=sys.stderr)
            return 2
        _quiet_libraries()
        try:
            return COMMANDS[args.command](args)
        except (ValueError, FileNotFoundError, FloatingPointError, ImportError, BackendUnavailable) as err:
            print(f"amo-engine {args.command}: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        kept = ("what finished is kept: rerun the same command to resume" if args.command in RESUMABLE
                else "nothing written")
        print(f"amo-engine {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130
