"""Build a TensorRT engine (model.plan) from an engine folder's ONNX with the TensorRT Python API:
static optimisation profile from the IOSpec, strongly typed by default, optional timing cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_path
from .backends.trt import import_tensorrt
from .engine import MANIFEST, ONNX_FILE, PLAN_FILE, EngineError, export_lock, file_records, manifest_spec, \
    read_manifest, write_json_atomic

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class BuildConfig:
    engine_dir: Path
    precision: str = "bf16"
    opt_level: int = 3
    strongly_typed: bool = True
    timing_cache: Path | None = None
    workspace_gib: float | None = None


def build_plan(cfg: BuildConfig) -> dict:
    """Build ``model.plan`` next to ``model.onnx`` and record it in the manifest."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 0 <= cfg.opt_level <= 5:
        raise ValueError("--opt-level must be 0..5")
    engine_dir = Path(cfg.engine_dir)
    manifest = read_manifest(engine_dir)
    trt = import_tensorrt()  # first: without TensorRT or a GPU nothing else matters
    if cfg.strongly_typed and manifest["dtype"] != PRECISIONS[cfg.precision]:
        raise ValueError(
            f"a strongly typed engine keeps the ONNX types ({manifest['dtype']}); export with "
            f"--dtype {cfg.precision} or build with --weakly-typed"
        )
    spec = manifest_spec(manifest)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if cfg.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(engine_dir / ONNX_FILE)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {engine_dir / ONNX_FILE}: {errors}")

    config = builder.create_builder_config()
    config.builder_optimization_level = cfg.opt_level
    if cfg.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 1024**3))
    if not cfg.strongly_typed and cfg.precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if cfg.precision == "fp16" else trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        if any(network.get_input(i).name == t.name for i in range(network.num_inputs)):
            shape = spec.shape(t.name)
            profile.set_shape(t.name, shape, shape, shape)  # static: min = opt = max
    config.add_optimization_profile(profile)
    cache_bytes = cfg.timing_cache.read_bytes() if cfg.timing_cache and cfg.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    with export_lock(engine_dir):
        start = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError("TensorRT failed to build the engine (see the TensorRT log above)")
        seconds = time.perf_counter() - start
        with atomic_path(engine_dir / PLAN_FILE) as tmp:
            tmp.write_bytes(memoryview(plan))
        if cfg.timing_cache:
            cfg.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
        import torch

        manifest["trt"] = {
            "version": trt.__version__,
            "gpu": torch.cuda.get_device_name(),
            "sm": "%d.%d" % torch.cuda.get_device_capability(),
            "precision": cfg.precision,
            "strongly_typed": cfg.strongly_typed,
            "opt_level": cfg.opt_level,
            "build_s": seconds,
        }
        manifest["files"] = file_records(engine_dir)
        write_json_atomic(engine_dir / MANIFEST, manifest)
    return manifest
