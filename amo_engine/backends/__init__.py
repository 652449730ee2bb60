"""Backends: one transformer evaluation over named tensors (eager torch, ONNX Runtime, TensorRT).

Contract::

    backend.spec: IOSpec
    backend(feeds: Mapping[str, Tensor]) -> Mapping[str, Tensor]   # "velocity", "attn"
    backend.close()

Feeds stay on the device; returned tensors belong to the backend and are overwritten by the next
call. Heavy runtimes are imported lazily, only when their backend is asked for.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import torch

from ..spec import IOSpec

BACKENDS = ("eager", "ort", "trt")


class BackendUnavailable(RuntimeError):
    """A runtime this machine cannot provide (no TensorRT, no GPU, no CUDA provider)."""


class Backend(Protocol):
    spec: IOSpec

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]: ...

    def close(self) -> None: ...


def load_backend(kind: str, engine_dir=None, device: str = "cpu", model=None, **options) -> Backend:
    """Open an engine folder with runtime ``kind``, refusing engines made from another model.

    ``model``: the LoadedModel the pipeline runs (family and weights are checked against the
    manifest). ``options`` go to the backend (ORT: opt_level, threads; TensorRT: cuda_graph).
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "eager":
        raise ValueError("the eager backend needs no engine: leave --backend at eager and drop --engine")
    from ..engine import check_model_matches, check_runtime, read_manifest, weights_fingerprint

    manifest = read_manifest(engine_dir, model=model.source if model is not None else None)
    if model is not None:
        check_model_matches(manifest, model.family, weights_fingerprint(model.folder))
    if kind == "ort":
        import onnxruntime

        from .ort import OrtBackend, max_supported_opset

        check_runtime(manifest, "ort", onnxruntime.__version__, max_supported_opset())
        return OrtBackend(engine_dir, device=device, manifest=manifest, **options)
    from .trt import TrtBackend, import_tensorrt

    check_runtime(manifest, "trt", import_tensorrt().__version__)
    return TrtBackend(engine_dir, device=device, manifest=manifest, **options)
