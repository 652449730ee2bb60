"""ONNX Runtime backend: InferenceSession + IOBinding on torch tensors, bound by pointer once.

Outputs are static torch buffers allocated once from the IOSpec and bound at construction;
inputs are rebound only when a feed's pointer or shape changes. CPU here; the CUDA provider
where onnxruntime-gpu and a GPU are present. On CUDA a call never waits on the host: ORT runs on a
stream of ours with the run option that skips its end-of-run stream synchronisation, after the
caller's stream (feeds ready), and the caller's stream then waits on ORT's (outputs ready), so work
stays ordered on the device as with any torch kernel. ``threads`` sets ORT's intra-op pool; ``spinning``
False stops its threads spin-waiting after a call (they would take CPU from other work in the
process, such as torch, on a machine with few cores).
"""

from __future__ import annotations

from typing import Mapping

import torch

from amo_engine.engine.folder import Engine
from amo_engine.engine.backends.base import ClosingBackend
from amo_engine.errors import BackendUnavailable

OPT_LEVELS = ("disable", "basic", "extended", "all")
NO_HOST_SYNC = "disable_synchronize_execution_providers"  # run option: Run returns without a stream sync


def _element_type(dtype: torch.dtype):
    import numpy as np

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}
    if dtype not in table:
        raise ValueError(f"ONNX Runtime IOBinding cannot bind {dtype}; export the engine in fp32 or fp16")
    return table[dtype]


def max_supported_opset() -> int:
    """Newest ai.onnx opset the installed ONNX Runtime has kernels for."""
    from onnxruntime.capi import _pybind_state as C

    return max(k.version_range[0] for k in C.get_all_opkernel_def() if k.domain in ("", "ai.onnx"))


class OrtBackend(ClosingBackend):
    kind = "ort"

    def __init__(self, engine: Engine, device: str = "cpu", opt_level: str = "all", threads: int | None = None,
                 spinning: bool = True, stage: str | None = None):
        """``stage``: run that exported stage of the engine (a prompt encoder or the VAE decoder)
        instead of the backbone."""
        import onnxruntime as ort

        self.engine = engine
        self.spec = engine.spec if stage is None else engine.stage_spec(stage)
        self.device = torch.device(device)
        if opt_level not in OPT_LEVELS:
            raise ValueError(f"unknown ORT optimisation level {opt_level!r}; choose one of {', '.join(OPT_LEVELS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[opt_level]
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("device cuda asked for, but this onnxruntime has no CUDA provider: "
                                   "pip uninstall onnxruntime && pip install onnxruntime-gpu")
            # ORT computes on a torch stream of ours (ORT rejects the default stream's handle 0);
            # each call makes it wait on the caller's stream, so feeds written by torch are ready.
            self._stream = torch.cuda.Stream(self.device)
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0,
                                                    "user_compute_stream": str(self._stream.cuda_stream)})]
            self._ort_device = ("cuda", self.device.index or 0)
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry(NO_HOST_SYNC, "1")
        else:
            self.run_options = None
            self._stream = None
            providers = ["CPUExecutionProvider"]
            self._ort_device = ("cpu", 0)
        graph = engine.artifact("onnx") if stage is None else engine.stage_artifact(stage)
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"ONNX Runtime cannot load {graph}: {err}; re-export the engine") from None
        graph_inputs = {i.name for i in self.session.get_inputs()}
        self._input_names = [n for n in self.spec.input_names if n in graph_inputs]
        self.binding = self.session.io_binding()
        self.outputs = self.spec.allocate("outputs", self.device)
        for name, buf in self.outputs.items():
            self._bind("output", name, buf)
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}

    def _bind(self, kind: str, name: str, t: torch.Tensor) -> None:
        device_type, device_id = self._ort_device
        bind = self.binding.bind_input if kind == "input" else self.binding.bind_output
        bind(name, device_type, device_id, _element_type(t.dtype), list(t.shape), t.data_ptr())

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        for name in self._input_names:
            t = feeds[name]
            key = (t.data_ptr(), tuple(t.shape))
            if self._bound.get(name) != key:
                if not t.is_contiguous():
                    raise ValueError(f"feed {name!r} must be contiguous to bind it by pointer")
                if tuple(t.shape) != self.spec.shape(name):
                    raise ValueError(f"feed {name!r} has shape {tuple(t.shape)}, the engine takes "
                                     f"{self.spec.shape(name)}; export an engine for this shape")
                self._bind("input", name, t)
                self._bound[name] = key
        if self._stream is None:
            self.session.run_with_iobinding(self.binding)
            return self.outputs
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)  # feeds written by torch are ready before ORT reads them
        self.session.run_with_iobinding(self.binding, self.run_options)  # returns once queued
        caller.wait_stream(self._stream)  # later work on the caller's stream sees the outputs
        return self.outputs

    def close(self) -> None:
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self.session = None
