"""TensorRT backend (optional; NVIDIA GPUs with the tensorrt package): deserialize model.plan,
bind static buffers by address once, run ``execute_async_v3`` on torch's current CUDA stream,
optionally replay the whole call as a CUDA graph."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..engine import PLAN_FILE, EngineError, manifest_spec, read_manifest
from . import BackendUnavailable


def import_tensorrt():
    """The tensorrt module, or a one-line explanation of why it cannot be used here."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install 'amo-engine[gpu]' on a machine with an "
                           "NVIDIA GPU; its libraries come from NVIDIA's package index)") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and torch sees none on this machine")
    return tensorrt


class TrtBackend:
    kind = "trt"

    def __init__(self, engine_dir: Path | str, device: str = "cuda", manifest: dict | None = None,
                 cuda_graph: bool = False):
        trt = import_tensorrt()
        engine_dir = Path(engine_dir)
        self.manifest = manifest if manifest is not None else read_manifest(engine_dir)
        self.spec = manifest_spec(self.manifest)
        plan = engine_dir / PLAN_FILE
        if not plan.is_file():
            raise EngineError(f"{engine_dir} has no {PLAN_FILE}; build it: amo-engine build {engine_dir}")
        self.device = torch.device(device if device != "cpu" else "cuda")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {plan} (built with another TensorRT or GPU?); rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in self._inputs:
            self.context.set_input_shape(name, self.spec.shape(name))
        self.outputs = self.spec.allocate("outputs", self.device)
        for name, buf in self.outputs.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self._bound: dict[str, int] = {}
        self.cuda_graph = cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        rebound = False
        for name in self._inputs:
            t = feeds[name]
            if self._bound.get(name) != t.data_ptr():
                if tuple(t.shape) != self.spec.shape(name) or not t.is_contiguous() or t.device.type != "cuda":
                    raise ValueError(f"feed {name!r} must be a contiguous CUDA tensor of shape {self.spec.shape(name)}")
                self.context.set_tensor_address(name, t.data_ptr())
                self._bound[name] = t.data_ptr()
                rebound = True
        stream = torch.cuda.current_stream(self.device)
        if not self.cuda_graph:
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return self.outputs
        if rebound or self._graph is None:
            self._capture()
        self._graph.replay()
        return self.outputs

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.context.execute_async_v3(side.cuda_stream)  # warm-up outside capture
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        self._graph = graph

    def close(self) -> None:
        self._graph = None
        self.context = None
        self.engine = None
