"""Export: backbone (the module that runs eagerly) -> ONNX with outputs ``velocity`` and ``attn``,
cleaned and folded, checked, with a manifest generated from the IOSpec, published atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from amo_engine.model.backbone import HookConfig
from amo_engine.engine.folder import export_lock, file_records, staging_dir, weights_fingerprint, write_manifest
from amo_engine.engine.manifest import ONNX_FILE, PT2_FILE, AotiSection, EngineError, Manifest, OnnxSection, StageSection
from amo_engine.spec import IOSpec, dtype_name
from amo_engine.model.inputs import sample_feeds

EXPORTERS = ("dynamo", "torchscript")
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom


@dataclass
class ExportConfig:
    out: Path
    batch: int = 1  # images per call; SD3 with CFG doubles the rows
    height: int | None = None
    width: int | None = None
    cfg_rows: bool = True  # SD3: [uncond ; cond] rows in one call
    max_sequence_length: int | None = None
    opset: int = 18
    exporter: str = "dynamo"
    dynamic_batch: bool = False
    fold_constants: bool = True
    aoti: bool = False  # also compile an AOTInductor package (model.pt2) on the model's device
    aoti_weights: str = "embedded"  # embedded in the package | "model": taken from the model at load
    stages: bool = False  # also export the prompt encoders and the VAE decoder (stages.py), ONNX
    log: bool = True

    def check(self) -> None:
        """Refuse option combinations no export can honour, before any work."""
        if self.exporter not in EXPORTERS:
            raise ValueError(f"unknown exporter {self.exporter!r}; choose one of {', '.join(EXPORTERS)}")
        if not 9 <= self.opset <= 23:
            raise ValueError(f"opset {self.opset} unsupported; use 17-20 (TensorRT 10 parses up to 20)")
        if self.batch < 1:
            raise ValueError("batch must be >= 1")
        if self.aoti_weights not in ("embedded", "model"):
            raise ValueError(f"unknown --aoti-weights {self.aoti_weights!r}; choose embedded or model")
        if self.stages and self.dynamic_batch:
            raise ValueError("--stages exports the engine's fixed shapes: drop --dynamic-batch")
        if self.aoti and self.dynamic_batch:
            raise ValueError("--aoti compiles the engine's fixed shapes: drop --dynamic-batch")
        if self.dynamic_batch and self.exporter != "dynamo":
            raise ValueError("--dynamic-batch needs --exporter dynamo (the TorchScript export bakes the batch into reshapes)")


def _say(cfg: ExportConfig, msg: str) -> None:
    if cfg.log:
        print(msg, flush=True)


class ExplicitRMSNorm(nn.Module):
    """torch.nn.RMSNorm as elementwise ops (the TorchScript exporter lacks aten::rms_norm)."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return y * self.weight if self.weight is not None else y


@contextlib.contextmanager
def torchscript_compatible(module: nn.Module) -> Iterator[None]:
    """Temporarily swap modules the TorchScript exporter cannot translate; restore afterwards."""
    swapped = []
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.RMSNorm):
                setattr(parent, name, ExplicitRMSNorm(child))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class InSpecOrder(nn.Module):
    """The backbone called with its inputs positionally in IOSpec order (optional inputs such as
    FLUX's guidance or the K/V swap pair come and go, so the forward's own order cannot be used)."""

    def __init__(self, backbone: nn.Module, names: list[str]):
        super().__init__()
        self.backbone = backbone
        self.names = list(names)
        self.eval()  # an inference graph: nn.Module starts in training mode, which the exporters warn about

    def forward(self, *args: torch.Tensor):
        return self.backbone(**dict(zip(self.names, args)))


def needs_external_data(module: nn.Module) -> bool:
    return sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES


def _export_onnx(backbone, spec: IOSpec, path: Path, cfg: ExportConfig, feeds: dict[str, torch.Tensor]) -> None:
    if cfg.dynamic_batch and spec.dims["batch"] == 1:
        # torch.export specialises a dimension traced at size 1: trace the symbolic batch at 2
        device = next(iter(feeds.values())).device
        feeds = sample_feeds(IOSpec(spec.inputs, spec.outputs, {**spec.dims, "batch": 2}), device)
    args = tuple(feeds[n] for n in spec.input_names)
    large = needs_external_data(backbone)
    dynamic = {"batch"} if cfg.dynamic_batch else set()
    if cfg.exporter == "dynamo":
        dynamic_shapes = None
        if dynamic:
            batch = torch.export.Dim("batch", min=1, max=64)
            dynamic_shapes = {"args": tuple({i: batch for i, d in enumerate(t.shape) if d == "batch"} or None
                                            for t in spec.inputs)}
        with _quiet_exporter():
            program = torch.onnx.export(
                InSpecOrder(backbone, spec.input_names),
                args,
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=cfg.opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
        program.save(str(path), external_data=large)
    else:
        with torchscript_compatible(backbone), warnings.catch_warnings():
            # the tracer warns at every shape-dependent Python branch (ours and diffusers'); the
            # export is static-shape by design, and the parity check after it is the real test
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                InSpecOrder(backbone, spec.input_names),
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=cfg.opset,
                dynamo=False,
                dynamic_axes=spec.dynamic_axes(dynamic) or None,
                do_constant_folding=True,
            )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's dynamo exporter logs that torchvision's ops are skipped (we use none) and
    torch's own deprecation notices; neither is about this export, so neither is shown."""
    import logging

    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        log.setLevel(level)


def _cleanup(path: Path) -> None:
    """Constant folding + dead-node cleanup with onnx-graphsurgeon; in place."""
    import onnx
    import onnx_graphsurgeon as gs

    model = onnx.load(str(path))
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    onnx.save(folded, str(path))


def _ort_loads(path: Path) -> None:
    """The graph must load in ONNX Runtime (catches graphs the checker accepts but runtimes refuse)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # a load check: errors only
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types
        raise EngineError(f"ONNX Runtime refuses the exported graph ({err}); try the other --exporter") from None


def _versions() -> dict[str, str]:
    import diffusers
    import onnx

    out = {"torch": torch.__version__, "diffusers": diffusers.__version__, "onnx": onnx.__version__,
           "python": platform.python_version()}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def _export_stages(model, cfg: ExportConfig, folder: Path, height: int, width: int, max_seq: int,
                   label: str) -> dict[str, StageSection]:
    """Export every prompt encoder and the VAE decoder of ``model`` into ``folder`` as
    ``<component>.onnx`` (fixed shapes, ``cfg.batch`` prompts or images per call), each checked by
    the onnx checker and an ONNX Runtime load; returns the manifest's ``stages`` section."""
    import numpy as np
    import onnx

    from amo_engine.engine.checks import check_graph
    from amo_engine.model.stages import pipeline_stages

    stages = pipeline_stages(model.pipe, cfg.batch, height, width, max_seq)
    _say(cfg, f"{label} exporting the other stages ({', '.join(stages)}) ...")
    section = {}
    for name, (module, spec) in stages.items():
        path = folder / f"{name}.onnx"
        # T5's relative-position buckets take log(0) on the diagonal and mask it out with a where();
        # constant folding evaluates both branches in numpy, which warns about the masked one
        with torch.no_grad(), np.errstate(divide="ignore", invalid="ignore"):
            _export_onnx(module, spec, path, cfg, sample_feeds(spec, next(module.parameters(), torch.empty(0)).device))
            if cfg.fold_constants and not needs_external_data(module):
                _cleanup(path)
        onnx.checker.check_model(str(path))
        _ort_loads(path)
        report = check_graph(onnx.load(str(path), load_external_data=False))
        section[name] = StageSection(module.kind, spec, path.name, report.trt_ok,
                                     tuple(report.to_json()["unsupported_ops"]))
    return section


def export_engine(model, cfg: ExportConfig, hook: HookConfig = HookConfig()) -> Manifest:
    """Export ``model`` (a LoadedModel) into engine folder ``cfg.out``; returns the manifest."""
    import onnx

    from amo_engine.engine.checks import check_graph

    cfg.check()
    out = Path(cfg.out)
    pipe, family = model.pipe, model.family
    height, width = cfg.height or model.default_size[0], cfg.width or model.default_size[1]
    max_seq = cfg.max_sequence_length or model.max_sequence_length
    text_len = family.text_layout(pipe, max_seq).length
    cfg_rows = family.batches_cfg and cfg.cfg_rows
    rows = family.rows(cfg.batch, cfg_rows)
    if cfg.stages:  # every component must have a stage: refused here, before any export work
        from amo_engine.model.stages import pipeline_stages

        pipeline_stages(pipe, cfg.batch, height, width, max_seq)

    backbone = family.backbone(pipe.transformer, hook, pipe.vae_scale_factor).eval()
    dtype = pipe.transformer.dtype
    spec = backbone.io_spec(rows, height, width, text_len, dtype)
    feeds = sample_feeds(spec, pipe.transformer.device)
    timings: dict[str, float] = {}
    steps = 4 + cfg.aoti + cfg.stages

    with export_lock(out), staging_dir(out) as tmp:
        onnx_path = tmp / ONNX_FILE
        _say(cfg, f"[1/{steps}] exporting {family.name} backbone ({cfg.exporter}, opset {cfg.opset}, rows {rows}, "
                  f"{height}x{width}, text {text_len}) ...")
        start = time.perf_counter()
        with torch.no_grad():
            _export_onnx(backbone, spec, onnx_path, cfg, feeds)
        timings["export_s"] = time.perf_counter() - start

        large = needs_external_data(backbone)  # weights live beside the graph: fold nothing in memory
        if cfg.fold_constants and not large:
            _say(cfg, f"[2/{steps}] folding constants and cleaning up (onnx-graphsurgeon) ...")
            start = time.perf_counter()
            _cleanup(onnx_path)
            timings["cleanup_s"] = time.perf_counter() - start
        else:
            _say(cfg, f"[2/{steps}] constant folding skipped" + (" (external data)" if large else ""))

        _say(cfg, f"[3/{steps}] checking the graph (onnx checker, op census, TensorRT support, softmax fusion) ...")
        onnx.checker.check_model(str(onnx_path))
        report = check_graph(onnx.load(str(onnx_path), load_external_data=False))
        if not report.fusion_ok:
            raise EngineError(f"the exported graph breaks attention fusion: {report.problems()}")
        _ort_loads(onnx_path)

        aoti = None
        if cfg.aoti:
            from amo_engine.engine.aoti import compile_package

            device = pipe.transformer.device
            _say(cfg, f"[4/{steps}] compiling the AOTInductor package for {device.type} "
                      f"(weights {cfg.aoti_weights}) ...")
            start = time.perf_counter()
            compile_package(backbone, feeds, tmp / PT2_FILE, embed_weights=cfg.aoti_weights == "embedded")
            timings["aoti_compile_s"] = time.perf_counter() - start
            aoti = AotiSection(device.type, torch.__version__, cfg.aoti_weights, PT2_FILE)

        stages = None
        if cfg.stages:
            start = time.perf_counter()
            stages = _export_stages(model, cfg, tmp, height, width, max_seq, f"[{steps - 1}/{steps}]")
            timings["stages_s"] = time.perf_counter() - start

        _say(cfg, f"[{steps}/{steps}] writing manifest ...")
        manifest = Manifest(
            family=family.name, io=spec,
            hook=dataclasses.replace(hook, hooked_blocks=backbone.hooked_blocks,
                                     modulation_blocks=tuple(sorted(backbone.modulation_blocks))
                                     if backbone.modulation_blocks else None,
                                     **({"lora_blocks": backbone.lora_layout.blocks,
                                         "lora_projections": backbone.lora_layout.projections}
                                        if backbone.lora_layout is not None else {})),
            files=file_records(tmp), model=model.source, weights_fingerprint=weights_fingerprint(model.folder),
            rows=rows, images_per_call=cfg.batch, cfg_rows=cfg_rows, height=height, width=width,
            max_sequence_length=max_seq, dtype=dtype_name(dtype),
            onnx=OnnxSection(ONNX_FILE, cfg.opset, cfg.exporter, cfg.dynamic_batch, cfg.fold_constants and not large),
            aoti=aoti, stages=stages or {}, graph=report.to_json(), versions=_versions(), timings=timings,
        )
        write_manifest(tmp, manifest)
    total = sum(timings.values())
    _say(cfg, f"exported {out} in {total:.1f} s; TensorRT-parser compatible: {report.trt_ok}"
              + ("" if report.trt_ok else f" ({'; '.join(report.problems())})"))
    return manifest
