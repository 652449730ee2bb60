"""The subcommands: each ``cmd_*`` builds the library's config from the parsed options and runs it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amo_engine.cli.checks import _eval_config, _localize_config
from amo_engine.model.inputs import GROUPS as INPUT_GROUPS
from amo_engine.model.lora import PROJECTIONS
from amo_engine.model.lora import resolve_blocks as resolve_lora_blocks


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _numbered(path: Path, i: int) -> Path:
    return path if i == 0 else path.with_name(f"{path.stem}_{i}{path.suffix}")


def runtime_of(args: argparse.Namespace):
    """The runtime.Runtime that generate's model and runtime flags name."""
    from amo_engine.pipeline.runtime import Runtime

    return Runtime(model=args.model, backend=args.backend, engine=args.engine, device=args.device, dtype=args.dtype,
                   cache_dir=args.cache_dir, threads=args.threads, ort_opt_level=args.ort_opt_level,
                   cuda_graph=args.cuda_graph, blocks=args.blocks, max_span_tokens=args.max_span_tokens)


def _run_generation(args: argparse.Namespace, plan):
    """Open the engine (if any), the model and the backend that generate's flags name; ``plan(model)``
    gives the GenerateConfig (it may read the model's settings). Returns (model, config, result)."""
    from amo_engine.pipeline.runtime import open_pipeline

    rt = runtime_of(args)
    with open_pipeline(rt) as pipeline:
        args.backend = rt.backend  # "auto" resolved
        config = plan(pipeline.model)
        result = pipeline(config)
    return pipeline.model, config, result


def _edit_blocks(args: argparse.Namespace, model) -> tuple[tuple[int, ...], int]:
    """--edit-blocks / --edit-start, else the model's localized blocks (text_edit.edit_defaults)."""
    from amo_engine.pipeline.text_edit import edit_defaults

    blocks, start = edit_defaults(model)
    blocks = args.edit_blocks or blocks
    if not blocks:
        raise ValueError(f"{model.source} names no text-localized blocks: pass --edit-blocks (find them with "
                         f"amo-engine localize --model {model.source} --out-dir localize)")
    return tuple(blocks), (args.edit_start if args.edit_start is not None else start)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.safe_text is None:
        model, _, result = _run_generation(
            args, lambda model: _with_adapters(args, model, _with_modulation(args, _generate_config(args))))
        _write_generated(args, model, result)
        return 0
    import dataclasses

    from amo_engine.pipeline.text_edit import read_word_list, safe_text_request

    words = read_word_list(None if args.safe_text == "default" else args.safe_text)
    request = None

    def plan(model):
        nonlocal request
        blocks, start = _edit_blocks(args, model)
        request = safe_text_request(args.prompt, words, blocks, start)
        return _with_modulation(args, dataclasses.replace(_generate_config(args), prompts=list(request.prompts),
                                                          text_swap=request.swap))

    model, config, result = _run_generation(args, plan)
    for i, word, substitute in request.replaced:
        print(f"safe text: prompt {i}: {word!r} -> {substitute!r} at joint blocks "
              f"{','.join(map(str, config.text_swap.blocks))} from step {config.text_swap.start_step}")
    if not request.replaced:
        print("safe text: no listed word in the quoted text; nothing replaced")
    _write_generated(args, model, _first_images(result, request.images))
    return 0


def _with_modulation(args: argparse.Namespace, config):
    """``config`` with --modulate's plan (presets sized to the steps; the groups counted from the prompts)."""
    if args.modulate is None:
        return config
    import dataclasses

    from amo_engine.pipeline.plans import group_spans, plan_for

    groups = max(len(group_spans(p, args.groups)) for p in config.prompts)
    return dataclasses.replace(config, modulation=plan_for(args.modulate, config.steps, groups), groups=args.groups)


def _with_adapters(args: argparse.Namespace, model, config):
    """``config`` with --lora's adapters, read and checked against the model (nothing generated yet)."""
    if not args.lora:
        return config
    import dataclasses

    from amo_engine.model.adapters import NONE, parse_choice, read_adapter

    adapters = []
    for choice in args.lora:
        path, scale = parse_choice(choice)
        adapters.append(None if path == NONE else read_adapter(path, model.family, model.pipe.transformer.config, scale))
    return dataclasses.replace(config, adapters=adapters)


def _first_images(result, n: int):
    """``result`` cut to its first ``n`` images (the user's; the rest are donor rows)."""
    import dataclasses

    attn = result.attn_map[:n] if result.attn_map is not None else None
    return dataclasses.replace(result, images=result.images[:n], latents=result.latents[:n], attn_map=attn)


def cmd_edit(args: argparse.Namespace) -> int:
    import dataclasses

    from amo_engine.pipeline.text_edit import edit_request, swap_target

    target_prompt = args.target_prompt or swap_target(args.prompt, args.target_text)
    request = None

    def plan(model):
        nonlocal request
        blocks, start = _edit_blocks(args, model)
        request = edit_request(args.prompt, target_prompt, blocks, start, args.keep_originals)
        return dataclasses.replace(_generate_config(args), prompts=list(request.prompts), text_swap=request.swap)

    model, config, result = _run_generation(args, plan)
    outputs = {"edit": args.out, "target": _suffixed(args.out, "target"), "original": _suffixed(args.out, "original")}
    written = [(outputs[role], image) for role, image in zip(request.roles, result.images)
               if role == "edit" or args.keep_originals]
    from amo_engine.pipeline.generate import save_png

    for path, image in written:
        save_png(image, path)
    if args.save_attn is not None:
        from amo_engine.plots import save_attention_overlay

        save_attention_overlay(result.images[0], result.attn_map[0], args.save_attn,
                               title="quoted-text attention of the edited image")
    if args.ocr is not None:
        from amo_engine.model.glyph.locate import read_words
        from amo_engine.ocr import Reader

        reads = read_words(Reader(args.ocr), [image for _, image in written], model.settings)
        for (path, _), read in zip(written, reads):
            print(f"OCR ({args.ocr}) reads {path}: {read or '(nothing)'}")
    swap = config.text_swap
    print(f"edit on {model.family.name} ({args.backend}, {result.sampler}, {result.steps} steps): {args.prompt!r} with "
          f"the text of {target_prompt!r} at joint blocks {','.join(map(str, swap.blocks))} from step "
          f"{swap.start_step} -> {', '.join(str(p) for p, _ in written)}")
    return 0


def _suffixed(path: Path, role: str) -> Path:
    return path.with_name(f"{path.stem}_{role}{path.suffix}")


def _generate_config(args: argparse.Namespace):
    from amo_engine.pipeline.generate import GenerateConfig

    return GenerateConfig(
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


def _write_generated(args: argparse.Namespace, model, result) -> None:
    """The images, optional attention overlays and OCR readings of one generate call."""
    from amo_engine.pipeline.generate import save_png
    from amo_engine.plots import save_attention_overlay

    for i, image in enumerate(result.images):
        save_png(image, _numbered(args.out, i))
    if args.save_attn is not None and result.attn_map is not None:
        title = ("AMO map m (quoted text -> patches)" if result.sampler == "amo" else
                 f"quoted-text attention (shown only: {result.sampler} does not use it)")
        for i, image in enumerate(result.images):
            save_attention_overlay(image, result.attn_map[i], _numbered(args.save_attn, i), title=title)
    paths = ", ".join(str(_numbered(args.out, i)) for i in range(len(result.images)))
    if args.ocr is not None:
        from amo_engine.model.glyph.locate import read_words
        from amo_engine.ocr import Reader

        for i, read in enumerate(read_words(Reader(args.ocr), result.images, model.settings)):
            print(f"OCR ({args.ocr}) reads {_numbered(args.out, i)}: {read or '(nothing)'}")
    print(
        f"{result.sampler} on {model.family.name} ({args.backend}): {result.steps} steps, "
        f"{1000 * result.seconds_per_step:.1f} ms/step, loop {result.loop_seconds:.2f} s -> {paths}"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from amo_engine.model.backbone import HookConfig
    from amo_engine.model.load import load_model
    from amo_engine.engine.export import ExportConfig, export_engine

    if args.aoti:
        from amo_engine.engine.aoti import NO_COMPILER, cpp_compiler
        from amo_engine.engine.backends import BackendUnavailable

        if cpp_compiler() is None:  # before any export work
            raise BackendUnavailable(NO_COMPILER)
    cfg = ExportConfig(
        out=args.out, batch=args.batch, height=args.height, width=args.width, cfg_rows=not args.no_cfg,
        max_sequence_length=args.max_sequence_length, opset=args.opset, exporter=args.exporter,
        dynamic_batch=args.dynamic_batch, fold_constants=not args.no_fold, aoti=args.aoti,
        aoti_weights=args.aoti_weights, stages=args.stages,
    )
    cfg.check()  # before the model loads
    if args.modulation_blocks is not None and not args.modulation:
        raise ValueError("--modulation-blocks applies to --modulation: add --modulation")
    if not args.lora_rank and (args.lora_blocks != "all" or args.lora_projections != PROJECTIONS):
        raise ValueError("--lora-blocks and --lora-projections apply to --lora-slots: add --lora-slots RANK, e.g. 8")
    model = load_model(args.model, args.dtype, args.device, args.cache_dir)
    groups = {g.switch: getattr(args, g.switch) for g in INPUT_GROUPS}
    lora_blocks = resolve_lora_blocks(args.lora_blocks, model.settings.edit_blocks or model.family.edit_blocks,
                                      model.source)
    export_engine(model, cfg, HookConfig(args.blocks, args.max_span_tokens, modulation_blocks=args.modulation_blocks,
                                         lora_blocks=lora_blocks, lora_projections=args.lora_projections, **groups))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from amo_engine.engine.backends import BackendUnavailable

    try:
        from amo_engine.engine.trt_build import BuildConfig, build_plan

        manifest = build_plan(BuildConfig(args.engine, args.precision, args.opt_level, not args.weakly_typed,
                                          args.timing_cache))
    except BackendUnavailable as err:  # no TensorRT / no GPU: one line, not a traceback
        print(f"amo-engine build: {err}", file=sys.stderr)
        return 3
    t = manifest.trt
    print(f"built {args.engine / t.file} ({t.precision}, TensorRT {t.version}, {t.gpu}) in {t.build_s:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from amo_engine.engine.folder import open_engine

    engine = open_engine(args.engine, model_name=args.model)  # hashes each file once; --verify reuses it
    manifest, spec = engine.manifest, engine.spec
    g = manifest.graph
    print(f"engine {args.engine}: {manifest.family} from {manifest.model!r}, {manifest.dtype}, "
          f"{manifest.height}x{manifest.width}, rows {manifest.rows}, hooked blocks {list(manifest.hook.hooked_blocks)}")
    if manifest.hook.lora_rank:
        h = manifest.hook
        print(f"LoRA slots: rank {h.lora_rank} at joint blocks {','.join(map(str, h.lora_blocks))}, "
              f"projections {','.join(h.lora_projections)} (generate --lora FILE[:SCALE])")
    files = ", ".join(f"{name} ({rec.bytes / 1e6:.1f} MB)" for name, rec in manifest.files.items())
    print(f"artifacts: {', '.join(engine.artifacts)}; files: {files}")
    if manifest.onnx is not None:
        o = manifest.onnx
        print(f"onnx: opset {o.opset}, exporter {o.exporter}, folded {o.folded}")
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
    if manifest.trt is not None:
        print(f"TensorRT plan: {manifest.trt}")
    for name in engine.stages:
        st, stage_spec = manifest.stages[name], engine.stage_spec(name)
        io = "; ".join(f"{t.name} {list(stage_spec.shape(t.name))}" for t in stage_spec.inputs + stage_spec.outputs)
        trt = "compatible" if st.trt_ok else f"NOT compatible (unsupported {list(st.unsupported_ops)})"
        print(f"stage {name} ({st.kind}): {io}; TensorRT parser: {trt}")
    if not (args.verify or args.measure):
        return 0
    from amo_engine.model.load import load_model

    model = load_model(args.model or manifest.model, manifest.dtype, args.device, args.cache_dir)
    engine.check_model(model)
    if args.measure:
        return _measure_default_backend(engine, model)
    from amo_engine.engine.verify import engine_parity, judge_parity

    p = engine_parity(model, engine, args.backend, args.device)
    ok, detail = judge_parity(p, manifest.dtype)
    print(f"\nverify ({args.backend} vs eager, {manifest.dtype} gates): {detail}: {'PASS' if ok else 'FAIL'}")
    if engine.stages and args.backend == "ort" and args.device == "cpu":
        from amo_engine.engine.verify import STAGE_MAX_ABS, stage_parity

        gate = STAGE_MAX_ABS.get(manifest.dtype)
        for name, err in stage_parity(model, engine).items():
            good = gate is None or err <= gate
            ok &= good
            verdict = f"(<= {gate:g}): {'PASS' if good else 'FAIL'}" if gate is not None else "(not gated)"
            print(f"verify stage {name} (ort vs eager, {manifest.dtype}): max abs {err:.3g} {verdict}")
    return 0 if ok else 1


def _measure_default_backend(engine, model) -> int:
    """inspect --measure: ORT against OpenVINO and AOTInductor here (those that can run the engine),
    recorded in the manifest unless the machine was busy."""
    from amo_engine.engine import default_backend
    from amo_engine.engine.folder import write_manifest
    from amo_engine.engine.manifest import EngineError

    if default_backend.candidates(engine) == ["ort"]:
        raise EngineError(f"nothing here to measure ORT against on {engine.folder}: pip install openvino, or export "
                          f"a CPU AOTInductor package with amo-engine export --model {engine.manifest.model} --aoti "
                          f"--out {engine.folder}")
    try:
        record = default_backend.measure(engine, model)
    except default_backend.BusyMachine as err:
        print(f"amo-engine inspect: {err}", file=sys.stderr)
        return 2
    write_manifest(engine.folder, engine.manifest.replace(default_backend=record))
    print(f"\ndefault CPU engine here: {record.backend} ("
          + ", ".join(f"{k} {v:.1f} ms" for k, v in record.p50_ms.items()) + f"), recorded for {record.machine}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from amo_engine.bench.cpu import BenchConfig, default_out_dir, run_bench

    threads = {} if args.threads is None else {"threads": args.threads}
    rows = run_bench(BenchConfig(args.config, args.calls, args.loops, args.steps, compile=not args.no_compile,
                                 aoti=not args.no_aoti, openvino=not args.no_openvino, ort_spinning=args.ort_spinning,
                                 out_dir=args.out_dir, cache_dir=args.cache_dir, **threads))
    out = args.out_dir if args.out_dir is not None else default_out_dir()
    print(f"wrote {out / args.config}.jsonl, .md and .png")
    return 2 if rows[0]["contention"]["contended"] else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from amo_engine.eval.report import write_report
    from amo_engine.eval.runner import run_eval
    from amo_engine.model.folders import resolve_folder
    from amo_engine.model.presets import ModelSettings

    if not args.report_only:
        run_eval(_eval_config(args))
    settings = ModelSettings.read(resolve_folder(args.model, args.cache_dir))
    print(write_report(args.out_dir, settings, args.ocr))
    print(f"wrote {args.out_dir}/rows.jsonl, summary.md, summary.json, plot.png, grid.png, grid-s*-c*.png, figure.png")
    return 0


def cmd_train_glyph(args: argparse.Namespace) -> int:
    from amo_engine.train.glyph import TrainConfig, Trainer

    steps = {} if args.steps is None else {"steps": args.steps}  # default: TrainConfig's
    cfg = TrainConfig(run_dir=args.run_dir, model=args.model, init_from=args.init_from, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                      device=args.device, workers=args.workers,
                      checkpoint_every=args.checkpoint_every, check_every=args.check_every, progress=not args.quiet,
                      extend=args.extend, **steps)
    cfg.validate()
    trainer = Trainer(cfg)
    if args.export_now:
        if not trainer.load_checkpoint():
            raise FileNotFoundError(f"{args.run_dir} has no checkpoint yet; train first (drop --export-now)")
        folder = trainer.export(args.export or args.run_dir / "model")
        print(f"exported the EMA weights of step {trainer.step} -> {folder}")
        return 0
    folder = trainer.run(args.export)
    print(f"trained {args.model} model -> {folder}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from amo_engine.train.lora import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(run_dir=args.run_dir, model=args.model, words=args.words,
                         samples_per_word=args.samples_per_word, blocks=args.blocks, projections=args.projections,
                         rank=args.rank, steps=args.steps, batch=args.batch, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, threads=args.threads, checkpoint_every=args.checkpoint_every,
                         progress=not args.quiet)
    cfg.validate()
    adapter = Finetuner(cfg).run()
    print(f"trained a rank-{args.rank} LoRA -> {adapter}")
    return 0


def cmd_lora_study(args: argparse.Namespace) -> int:
    from amo_engine.train.lora_study import StudyConfig, run_study

    run_study(StudyConfig(out_dir=args.out_dir, run_root=args.run_root, progress=not args.quiet))
    print(f"wrote {args.out_dir}/rows.jsonl, results.json, table.md")
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from amo_engine.eval.localize import run_localize

    run_localize(_localize_config(args))
    print(f"wrote {args.out_dir}/results.json, table.md, plot.png, grid.png")
    return 0


def _service_config(args: argparse.Namespace):
    from amo_engine.serve.app import ServiceConfig

    backend = args.backend or ("ort" if args.engine is not None else "eager")
    runtime = {"model": args.model, "backend": backend, "engine": str(args.engine) if args.engine else None,
               "device": args.device, "dtype": args.dtype, "threads": args.threads,
               "cache_dir": str(args.cache_dir) if args.cache_dir else None}
    return ServiceConfig(runtime=runtime, replicas=args.replicas, max_batch=args.max_batch or
                         (4 if backend == "eager" else None), batch_wait_ms=args.batch_wait_ms,
                         max_queued=args.max_queued, request_timeout_s=args.request_timeout,
                         cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                         max_steps=args.max_steps, lora_dir=str(args.lora_dir) if args.lora_dir else None,
                         max_prompt_chars=args.max_prompt_chars, max_body_bytes=1024 * args.max_body_kb,
                         api_key_file=str(args.api_key_file) if args.api_key_file else None,
                         max_concurrent_per_key=args.max_concurrent_per_key)


def _ray_cpus(args: argparse.Namespace) -> int:
    """Logical CPUs for the local Ray: the replicas' reservations, the proxy and controller, at least the machine's."""
    import math
    import os

    return max(os.cpu_count() or 1, math.ceil(args.replicas * args.cpus_per_replica) + 1)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from amo_engine.serve import app

    app.start(_service_config(args), args.host, args.port, num_cpus=_ray_cpus(args), metrics_port=args.metrics_port)
    url = f"http://{args.host}:{args.port}"
    metrics = f", metrics http://127.0.0.1:{args.metrics_port}/metrics" if args.metrics_port else ""
    print(f"serving {args.model} at {url}/v1/images/generations ({args.replicas} replica(s)); health {url}/healthz, "
          f"ready {url}/readyz, stats {url}/v1/stats{metrics}; Ctrl-C stops", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    app.stop()
    return 0


def _start_cluster(args: argparse.Namespace):
    """A Ray cluster of ``--nodes`` nodes on this machine with the service deployed (one replica a node)."""
    import math
    import socket
    import tempfile

    from amo_engine.serve.app import app_args
    from amo_engine.serve.cluster import LocalCluster, serve_config

    with socket.socket() as s:  # a free port for the head's GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="amo-cluster-")), port,
                           cpus_per_node=max(1, math.ceil(args.cpus_per_replica)))
    try:
        cluster.start(workers=args.nodes - 1)
        cluster.deploy(serve_config(app_args(_service_config(args)), args.host, args.port, proxy_location="HeadOnly",
                                    max_replicas_per_node=1, gateways=args.nodes))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _soak(args: argparse.Namespace, lt) -> int:
    """``loadtest --soak-minutes``: the references, then the steady-rate run; its table and JSON."""
    from amo_engine.serve import loadtest, soak

    try:
        reference = loadtest.references(lt)
    except (RuntimeError, TimeoutError) as err:
        print(f"amo-engine loadtest: error: {err}", file=sys.stderr)
        return 1
    result = soak.run(soak.Soak(lt, args.soak_minutes, args.soak_rate), reference)
    from amo_engine.timing import cpu_facts

    result["machine"] = cpu_facts()
    text = soak.table(result)
    print(text)
    if args.out is not None:
        from amo_engine.atomic import write_json

        write_json(args.out, result)
        args.out.with_suffix(".md").write_text(text + "\n")
    return 1 if result["errors"] or result["image_mismatches"] else 0


def cmd_loadtest(args: argparse.Namespace) -> int:

    from amo_engine.serve import loadtest

    started = args.url is None
    url = args.url or f"http://{args.host}:{args.port}"
    cluster, fault = None, None
    if started and args.nodes > 1:
        cluster = _start_cluster(args)
        if args.kill_node_after is not None:
            fault = loadtest.node_fault(cluster, args.replicas)
    elif started:
        from amo_engine.serve import app

        app.start(_service_config(args), args.host, args.port, num_cpus=_ray_cpus(args))
    try:
        kill_after = args.kill_replica_after if args.kill_node_after is None else args.kill_node_after
        lt = loadtest.LoadTest(url.rstrip("/"), tuple(args.concurrency), args.requests, args.payloads, args.steps,
                               args.sampler, max_seconds=args.max_seconds, kill_replica_after_s=kill_after,
                               started_here=started)
        if args.soak_minutes is not None:
            return _soak(args, lt)
        try:
            result = loadtest.run(lt, args.replicas, fault)
            if cluster is not None:
                result["cluster"] = {"nodes": args.nodes, "cpus_per_node": cluster.cpus_per_node,
                                     "replicas_by_node": cluster.replicas_by_node()}
        except (RuntimeError, TimeoutError) as err:  # the service is not there, or fails alone
            print(f"amo-engine loadtest: error: {err}", file=sys.stderr)
            return 1
        from amo_engine.timing import cpu_facts

        result["machine"] = cpu_facts()  # the client's; with a service started here, the server's too
    finally:
        if cluster is not None:
            import shutil

            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
        elif started:
            app.stop()
    text = loadtest.table(result)
    print(text)
    if "kill" in result:
        kill = result["kill"]
        seconds = (lambda v: "not within 120 s" if v is None else f"{v:.1f} s")
        what = (f"node {kill['killed_node']} ({kill['processes_killed']} processes)" if "killed_node" in kill
                else f"pid {kill['killed_pid']}")
        if "killed_node" in kill:
            print(f"node kill: replicas by node before {kill['replicas_by_node_before']}, after "
                  f"{kill['replicas_by_node_after']}; Ray marked the node dead after {seconds(kill['node_dead_s'])}, "
                  f"a new node joined after {seconds(kill['node_back_s'])}")
        print(f"{'node' if 'killed_node' in kill else 'replica'} kill ({kill['concurrency']} clients): {what} killed; "
              f"{kill['requests']} "
              f"requests, {kill['ok']} ok, {len(kill['errors'])} failed, {kill['retries_after_503']} retried after "
              f"503, {kill['gateway']['retries_after_replica_death']} retried by the gateway, "
              f"{kill['image_mismatches']} image mismatches, {kill['hung']} hung, slowest {kill['max_latency_s']:.2f} s; "
              f"Serve saw the death after {seconds(kill['noticed_s'])}, every replica running again after "
              f"{seconds(kill['recovery_s'])}")
        for error in kill["errors"]:
            print(f"  {error['status']}: {error['error']}")
    if args.out is not None:
        from amo_engine.atomic import write_json

        write_json(args.out, result)
        args.out.with_suffix(".md").write_text(text + "\n")
    bad = sum(lv["image_mismatches"] + lv["requests"] - lv["responses"] for lv in result["levels"])
    bad += result["kill"]["image_mismatches"] + result["kill"]["hung"] if "kill" in result else 0
    return 1 if bad else 0
