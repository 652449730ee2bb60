"""Backends: one transformer evaluation over named tensors (eager torch, ONNX Runtime, AOTInductor,
TensorRT).

Contract::

    backend.spec: IOSpec | None          # the fixed shapes an engine takes; None: any (eager)
    backend(feeds: Mapping[str, Tensor]) -> Mapping[str, Tensor]   # "velocity", "attn"
    backend.input_buffers(spec, device)  # the feeds for ``spec``: the same tensors every request
    backend.close()                      # also: ``with open_backend(...) as backend:``

Feeds stay on the device; returned tensors belong to the backend and are overwritten by the next
call. Engine backends take an ``engine.Engine`` (opened and checked once) and never re-read its
metadata. Heavy runtimes are imported lazily, only when their backend is asked for; this module
imports nothing heavy, so the command line can read ``BACKENDS`` before any runtime loads.
"""

from __future__ import annotations

from amo_engine.engine.backends.base import Backend, ClosingBackend  # noqa: F401  (callers import them from here)
from amo_engine.errors import BackendUnavailable  # noqa: F401  (raised by every backend; callers import it from here)

BACKENDS = ("eager", "ort", "openvino", "aoti", "trt")


def open_backend(kind: str, engine=None, model=None, hook=None, device: str = "cpu", **options) -> Backend:
    """The backend ``kind`` for ``model`` (a LoadedModel).

    eager: the model's own transformer behind the attention hook (``hook``: a backbone.HookConfig);
    no engine. ort / openvino / aoti / trt: ``engine``, an ``engine.Engine`` or an engine folder
    (opened here, checked against ``model``); the hook configuration is the engine's. ``options`` go
    to the backend (ORT: opt_level, threads, spinning; OpenVINO: threads; AOTInductor and TensorRT:
    cuda_graph). ORT and OpenVINO run the same ``model.onnx``.
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "eager":
        if engine is not None:
            raise ValueError("the eager backend needs no engine: leave --backend at eager and drop --engine")
        from amo_engine.model.backbone import HookConfig
        from amo_engine.engine.backends.eager import EagerBackend

        pipe = model.pipe
        return EagerBackend(model.family.backbone(pipe.transformer, hook or HookConfig(), pipe.vae_scale_factor))
    if engine is None:
        raise ValueError(f"the {kind} backend runs an engine: pass --engine DIR")
    from amo_engine.engine.folder import Engine, check_runtime, open_engine

    if not isinstance(engine, Engine):
        engine = open_engine(engine, model)
    if kind == "ort":
        import onnxruntime

        from amo_engine.engine.backends.ort import OrtBackend, max_supported_opset

        check_runtime(engine.manifest, "ort", onnxruntime.__version__, max_supported_opset(), folder=engine.folder)
        return OrtBackend(engine, device=device, **options)
    if kind == "openvino":
        from amo_engine.engine.backends.openvino import OpenVinoBackend, import_openvino

        check_runtime(engine.manifest, "openvino", import_openvino().__version__, folder=engine.folder)
        return OpenVinoBackend(engine, device=device, **options)
    if kind == "aoti":
        import torch

        from amo_engine.engine.backends.aoti import AotiBackend

        check_runtime(engine.manifest, "aoti", torch.__version__, device=device, folder=engine.folder)
        return AotiBackend(engine, model, device=device, **options)
    from amo_engine.engine.backends.trt import TrtBackend, import_tensorrt

    check_runtime(engine.manifest, "trt", import_tensorrt().__version__, folder=engine.folder)
    return TrtBackend(engine, device=device, **options)
