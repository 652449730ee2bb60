"""Build TensorRT engines from an engine folder's ONNX graphs with the TensorRT Python API: the
backbone's model.plan and one <stage>.plan per exported stage; static optimisation profiles from
each IOSpec, strongly typed by default, one timing cache shared by the builds."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from amo_engine.atomic import atomic_path
from amo_engine.engine.backends.trt import import_tensorrt
from amo_engine.engine.folder import export_lock, file_records, read_manifest, write_manifest
from amo_engine.engine.manifest import ONNX_FILE, PLAN_FILE, EngineError, Manifest, TrtSection
from amo_engine.spec import IOSpec

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class BuildConfig:
    engine_dir: Path
    precision: str = "bf16"
    opt_level: int = 3
    strongly_typed: bool = True
    timing_cache: Path | None = None
    workspace_gib: float | None = None


# graphs that must not run in float16 (the anchors: T5 overflows; FLUX's VAE decodes to NaN)
HALF_UNSAFE = {"t5": "T5 overflows in float16", ("flux", "vae_decoder"): "FLUX's VAE decoder gives NaN in float16"}


def half_unsafe(family: str, kind: str) -> str | None:
    """Why a stage of ``kind`` in ``family`` must stay out of float16, or None."""
    return HALF_UNSAFE.get(kind) or HALF_UNSAFE.get((family, kind))


def stage_precisions(manifest: Manifest, precision: str, strongly_typed: bool) -> dict[str, str]:
    """The precision each exported stage builds in: the requested one, except that T5 and FLUX's VAE
    decoder stay in fp32 when fp16 is asked of a weakly typed build; a strongly typed build keeps the
    ONNX types, so float16 there is refused with the export that fixes it."""
    found = {}
    for name, stage in manifest.stages.items():
        reason = half_unsafe(manifest.family, stage.kind)
        if reason and strongly_typed and stage.io.outputs[0].dtype == "float16":
            raise ValueError(f"stage {name}: {reason}; export with --dtype bf16 (or fp32) and build again")
        found[name] = "fp32" if reason and precision == "fp16" else precision
    return found


def build_plan(cfg: BuildConfig) -> Manifest:
    """Build ``model.plan`` next to ``model.onnx`` (and ``<stage>.plan`` for every stage exported
    with --stages) and record them in the manifest."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 0 <= cfg.opt_level <= 5:
        raise ValueError("--opt-level must be 0..5")
    engine_dir = Path(cfg.engine_dir)
    manifest = read_manifest(engine_dir)
    trt = import_tensorrt()  # first: without TensorRT or a GPU nothing else matters
    if cfg.strongly_typed and manifest.dtype != PRECISIONS[cfg.precision]:
        raise ValueError(
            f"a strongly typed engine keeps the ONNX types ({manifest.dtype}); export with "
            f"--dtype {cfg.precision} or build with --weakly-typed"
        )
    graphs = [(None, engine_dir / ONNX_FILE, manifest.io, cfg.precision, PLAN_FILE)]
    for name, precision in stage_precisions(manifest, cfg.precision, cfg.strongly_typed).items():
        stage = manifest.stages[name]
        graphs.append((name, engine_dir / stage.onnx_file, stage.io, precision, f"{name}.plan"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_bytes = cfg.timing_cache.read_bytes() if cfg.timing_cache and cfg.timing_cache.is_file() else b""
    cache = builder.create_builder_config().create_timing_cache(cache_bytes)

    with export_lock(engine_dir):
        import torch

        for stage, onnx_path, spec, precision, plan_file in graphs:
            start = time.perf_counter()
            plan = _build_one(trt, builder, logger, onnx_path, spec, precision, cfg, cache)
            with atomic_path(engine_dir / plan_file) as tmp:
                tmp.write_bytes(memoryview(plan))
            record = TrtSection(trt.__version__, torch.cuda.get_device_name(),
                                "%d.%d" % torch.cuda.get_device_capability(), precision, cfg.strongly_typed,
                                cfg.opt_level, time.perf_counter() - start, plan_file)
            if stage is None:
                manifest = manifest.replace(trt=record)
            else:
                stages = {**manifest.stages, stage: dataclasses.replace(manifest.stages[stage], trt=record)}
                manifest = manifest.replace(stages=stages)
        if cfg.timing_cache:
            cfg.timing_cache.write_bytes(memoryview(cache.serialize()))
        # the graphs were hashed once when the manifest was read; only the new plans are hashed here
        manifest = manifest.replace(files={**manifest.files, **file_records(engine_dir, [g[-1] for g in graphs])})
        write_manifest(engine_dir, manifest)
    return manifest


def _build_one(trt, builder, logger, onnx_path: Path, spec: IOSpec, precision: str, cfg: BuildConfig, cache) -> bytes:
    """One serialized plan: static optimisation profile from ``spec`` (min = opt = max)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if cfg.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = cfg.opt_level
    if cfg.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 1024**3))
    if not cfg.strongly_typed and precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        if any(network.get_input(i).name == t.name for i in range(network.num_inputs)):
            shape = spec.shape(t.name)
            profile.set_shape(t.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build {onnx_path.name} (see the TensorRT log above)")
    return plan
