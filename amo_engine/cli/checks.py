"""What the command line can judge of the options before anything heavy is imported or any model loaded
(a typo costs no seconds): one ``check_*`` per subcommand, each applying the request rules of ``rules.py``."""

from __future__ import annotations

import argparse
from pathlib import Path


def check_model_name(args: argparse.Namespace) -> None:
    """The model names something that exists here (a preset, a folder, a cached model id): judged
    before torch or diffusers are imported, so a typo costs no seconds."""
    from amo_engine.model.folders import resolve_folder

    resolve_folder(args.model, getattr(args, "cache_dir", None), build=False)


def check_finetune_args(args: argparse.Namespace) -> None:
    """finetune's numbers and word list, before torch loads."""
    from amo_engine.train.lora import FinetuneConfig

    check_model_name(args)
    FinetuneConfig(args.run_dir, words=args.words, rank=args.rank, steps=args.steps, batch=args.batch, lr=args.lr,
                   ema_decay=args.ema_decay, samples_per_word=args.samples_per_word,
                   checkpoint_every=args.checkpoint_every).validate()


def check_lora_args(choices: list[str], prompts: int) -> None:
    """--lora FILE[:SCALE] (repeatable): one for all prompts or one per prompt, each file there."""
    from amo_engine.model.adapters import NONE, parse_choice

    if len(choices) not in (1, prompts):
        raise ValueError(f"{len(choices)} --lora for {prompts} --prompt: give one for every prompt (--lora none for "
                         "no adapter) or one for all")
    for choice in choices:
        path, _ = parse_choice(choice)
        if path != NONE and not Path(path).is_file():
            raise ValueError(f"--lora {choice}: no file {path} (FILE[:SCALE], e.g. runs/lora/adapter.safetensors:0.8)")


def check_generate_args(args: argparse.Namespace) -> None:
    """Everything about generate's options that can be judged before importing or loading anything."""
    from amo_engine.model.folders import size_limits
    from amo_engine.rules import check_count, check_size, check_strength, parse_size

    check_model_name(args)
    check_count("--steps", args.steps)
    check_strength("--c", args.c)
    check_count("--num-images", args.num_images)
    for flag in ("max_span_tokens", "max_sequence_length", "threads"):
        if getattr(args, flag) is not None:
            check_count("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.backend != "eager" and args.engine is None:
        raise ValueError(f"--backend {args.backend} needs --engine DIR; make one with: {_engine_for_args(args)} "
                         "(then pass --engine with that folder)")
    if args.ocr is not None:
        from amo_engine.ocr import check_available

        check_available(args.ocr)
    if args.backend == "eager" and args.engine is not None:
        raise ValueError("--engine needs --backend ort, aoti or trt (eager runs the model itself): add --backend ort")
    if args.cuda_graph and (args.backend not in ("aoti", "trt") or not args.device.startswith("cuda")):
        raise ValueError("--cuda-graph needs --backend aoti or trt on --device cuda")
    if args.ort_opt_level != "all" and args.backend != "ort":
        raise ValueError("--ort-opt-level applies to --backend ort: add --backend ort --engine DIR, or drop it")
    if getattr(args, "lora", None):
        check_lora_args(args.lora, len(args.prompt))
        if getattr(args, "safe_text", None) is not None:
            raise ValueError("--lora and --safe-text do not combine yet: generate with one of them")
    if getattr(args, "safe_text", None) not in (None, "default"):
        from amo_engine.pipeline.text_edit import read_word_list

        read_word_list(args.safe_text)
    modulate = getattr(args, "modulate", None)
    if modulate is not None:
        from amo_engine.pipeline.plans import PRESETS, read_plan

        if modulate not in PRESETS:
            read_plan(modulate)
    if getattr(args, "groups", None) is not None and modulate is None:
        raise ValueError("--groups names the entities for --modulate: add --modulate separate (or align)")
    if getattr(args, "safe_text", None) is not None and args.num_images != 1:
        raise ValueError("--safe-text pairs each prompt with its twin: use --num-images 1 (repeat --prompt instead)")
    if getattr(args, "edit_start", None) is not None and not 0 <= args.edit_start < args.steps:
        raise ValueError(f"--edit-start {args.edit_start} must be a step index 0..{args.steps - 1}")
    _check_quoted_words_fit(args)
    if args.size is not None:
        if args.height is not None or args.width is not None:
            raise ValueError("--size sets both sides: drop --height and --width")
        args.width, args.height = parse_size(args.size)
    limits = size_limits(args.model, args.cache_dir)
    if limits is not None:
        check_size(args.width, args.height, *limits, model=args.model)


def _check_quoted_words_fit(args: argparse.Namespace) -> None:
    """On a glyph model (a sign of one letter per cell), every quoted word must fit its canvas."""
    from amo_engine.model.glyph.render import check_word_fits
    from amo_engine.model.glyph.variants import of_settings
    from amo_engine.model.presets import SHIPPED, ModelSettings, ensure_preset
    from amo_engine.prompts import find_quoted_spans

    path = Path(args.model).expanduser()
    if args.model in SHIPPED:
        path = ensure_preset(args.model)
    if not (path / "model_index.json").is_file():
        return  # not readable without building or downloading: the pipeline says what it must
    settings = ModelSettings.read(path)
    variant = of_settings(settings) if settings.vocabulary else None
    if variant is not None:
        for prompt in args.prompt if isinstance(args.prompt, list) else [args.prompt]:
            for span in find_quoted_spans(prompt):
                check_word_fits(span.text(prompt), variant)


def _engine_for_args(args: argparse.Namespace) -> str:
    """The export command of an engine that runs what generate's or edit's flags ask for."""
    from amo_engine.engine.hints import engine_folder_for, export_command

    edit, safe_text = args.command == "edit", getattr(args, "safe_text", None) is not None
    images = (3 if getattr(args, "keep_originals", False) else 2) if edit else (2 if safe_text else 1) * args.num_images
    return export_command(args.model, engine_folder_for(args.model), batch=images, height=args.height,
                          width=args.width, dtype=args.dtype, max_sequence_length=args.max_sequence_length,
                          blocks=args.blocks, kv_swap=edit or safe_text,
                          modulation=getattr(args, "modulate", None) is not None,
                          aoti=args.backend == "aoti", device=args.device if args.backend == "aoti" else "cpu")


def check_edit_args(args: argparse.Namespace) -> None:
    """edit's options, judged before anything heavy: the generation flags, then the prompts."""
    from amo_engine.pipeline.text_edit import edit_request, swap_target

    check_generate_args(args)
    target = args.target_prompt or swap_target(args.prompt, args.target_text)
    edit_request(args.prompt, target, (0,), 0)  # the prompts' quoted text (blocks are checked on the model)


def check_eval_args(args: argparse.Namespace) -> None:
    from amo_engine.ocr import check_available

    check_model_name(args)
    _eval_config(args).validate()
    check_available(args.ocr)


def check_localize_args(args: argparse.Namespace) -> None:
    import importlib.util

    from amo_engine.ocr import check_available

    check_model_name(args)
    _localize_config(args).validate()
    check_available(args.ocr)
    if importlib.util.find_spec("skimage") is None:
        raise ImportError("amo-engine localize measures SSIM with scikit-image: pip install 'amo-engine[eval]'")


def check_serve_args(args: argparse.Namespace) -> None:
    """serve / loadtest options judged before Ray starts or a model loads."""
    starts = args.command == "serve" or getattr(args, "url", None) is None
    for name in ("replicas", "max_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queued < 0 or args.request_timeout <= 0 or args.batch_wait_ms < 0:
        raise ValueError("--max-queued must be >= 0, --request-timeout > 0 and --batch-wait-ms >= 0")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    if args.command == "loadtest":
        if args.requests < 1 or args.payloads < 1 or args.steps < 1 or min(args.concurrency) < 1:
            raise ValueError("--requests, --payloads, --steps and every --concurrency must be >= 1")
        if args.kill_replica_after is not None and not starts:
            raise ValueError("--kill-replica-after kills a replica of a service started here: drop --url")
        if args.nodes < 1 or (args.nodes > 1 and not starts):
            raise ValueError("--nodes N (>= 1) starts a cluster here: drop --url")
        if args.kill_node_after is not None and (args.nodes < 2 or args.kill_replica_after is not None):
            raise ValueError("--kill-node-after kills a worker node: it needs --nodes 2 (or more) and no "
                             "--kill-replica-after")
        if args.soak_minutes is not None and (args.soak_minutes <= 0 or args.soak_rate <= 0 or
                                              args.kill_node_after is not None or args.kill_replica_after is not None):
            raise ValueError("--soak-minutes and --soak-rate must be > 0, and a soak run kills nothing: drop "
                             "--kill-node-after / --kill-replica-after")
        if args.nodes > 1 and args.replicas != args.nodes:
            raise ValueError(f"--nodes {args.nodes} places one replica a node: pass --replicas {args.nodes}")
    for name in ("max_prompt_chars", "max_body_kb", "max_concurrent_per_key"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not starts:
        return
    keys = getattr(args, "api_key_file", None)
    if keys is not None:
        if not Path(keys).is_file():
            raise ValueError(f"--api-key-file {keys}: no such file (one key a line)")
        if not any(line.strip() and not line.strip().startswith("#") for line in Path(keys).read_text().splitlines()):
            raise ValueError(f"--api-key-file {keys} holds no key: one key a line")
    lora_dir = getattr(args, "lora_dir", None)
    if lora_dir is not None and not any(Path(lora_dir).glob("*.safetensors")):
        raise ValueError(f"--lora-dir {lora_dir}: no .safetensors adapters there (amo-engine finetune writes "
                         "RUN_DIR/adapter.safetensors; copy them in under the names requests will use)")
    check_model_name(args)
    from amo_engine.engine.hints import engine_folder_for, export_command

    backend = args.backend or ("ort" if args.engine is not None else "eager")
    if backend != "eager" and args.engine is None:
        raise ValueError(f"--backend {backend} needs --engine DIR; make one with: "
                         f"{export_command(args.model, engine_folder_for(args.model), batch=args.max_batch or 4)} "
                         "(then pass --engine with that folder)")
    if args.engine is not None and not (args.engine / "manifest.json").is_file():
        raise ValueError(f"{args.engine} is not an engine folder (no manifest.json); make one with: "
                         f"{export_command(args.model, args.engine, batch=args.max_batch or 4)}")
    if backend == "eager" and args.engine is not None:
        raise ValueError("--engine needs --backend ort, aoti or trt: add --backend ort")
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ImportError("serving needs Ray Serve: pip install 'amo-engine[serve]'") from None


def _eval_config(args: argparse.Namespace):
    from amo_engine.eval.runner import EvalConfig

    return EvalConfig(model=args.model, out_dir=args.out_dir, words=args.words, max_words=args.max_words,
                      seeds=args.seeds, first_seed=args.first_seed, samplers=tuple(s for s in args.samplers.split(",") if s), c=args.c,
                      steps=args.steps, guidance=args.guidance, batch=args.batch, ocr=args.ocr,
                      backend=args.backend, engine=args.engine, device=args.device, cache_dir=args.cache_dir,
                      progress=not args.quiet)


def _localize_config(args: argparse.Namespace):
    from amo_engine.eval.localize import LocalizeConfig

    try:
        starts = tuple(int(s) for s in args.start_steps.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--start-steps takes comma-separated step indices, e.g. 0,2,4; got {args.start_steps!r}") from None
    return LocalizeConfig(out_dir=args.out_dir, model=args.model, words=args.words, pairs=args.pairs,
                          template=args.template, steps=args.steps, sampler=args.sampler, seed=args.seed,
                          batch=args.batch, combine=args.combine, start_steps=starts, ocr=args.ocr,
                          write_settings=args.write_settings, cache_dir=args.cache_dir, progress=not args.quiet)
