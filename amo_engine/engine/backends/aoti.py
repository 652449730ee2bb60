"""AOTInductor backend: the engine's ``model.pt2`` package, loaded once, called on the feeds.

CPU here, CUDA where the package was compiled on a GPU. A package exported with
``--aoti-weights model`` holds code alone and runs on the loaded model's own transformer weights
(no copy). ``cuda_graph`` captures one call in a CUDA graph over static input buffers and replays
it; its input buffers are the captured ones (``input_buffers``), so a replay copies nothing; other
feeds are copied into them.
"""

from __future__ import annotations

from typing import Mapping

import torch

from amo_engine.engine.aoti import CudaGraphCall, load_package
from amo_engine.engine.folder import Engine
from amo_engine.engine.backends.base import ClosingBackend
from amo_engine.errors import BackendUnavailable


class AotiBackend(ClosingBackend):
    kind = "aoti"

    def __init__(self, engine: Engine, model=None, device: str = "cpu", cuda_graph: bool = False):
        self.engine = engine
        self.spec = engine.spec
        self.device = torch.device(device)
        weights_from = None
        if engine.manifest.aoti.weights == "model":
            if model is None:
                raise ValueError(f"{engine.folder}'s AOTInductor package holds no weights: open it with the model it "
                                 "was exported from (--model)")
            pipe = model.pipe
            weights_from = model.family.backbone(pipe.transformer, engine.hook, pipe.vae_scale_factor)
        self._weights_from = weights_from  # the package reads these parameters in place: keep them alive
        self.runner = load_package(engine.artifact("aoti"), weights_from)
        self._graph = None
        if cuda_graph:
            if self.device.type != "cuda":
                raise BackendUnavailable(f"--cuda-graph needs a CUDA device; this backend runs on {self.device}")
            self.inputs = self.spec.allocate("inputs", self.device)
            self._graph = CudaGraphCall(self.runner, self.inputs)

    def input_buffers(self, spec, device) -> dict[str, torch.Tensor]:
        """The captured graph's own inputs, when it runs one: writing them is all a step needs."""
        if self._graph is not None and spec.signature() == self.spec.signature():
            return self.inputs
        return super().input_buffers(spec, device)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        for name in self.spec.input_names:
            if tuple(feeds[name].shape) != self.spec.shape(name):
                raise ValueError(f"feed {name!r} has shape {tuple(feeds[name].shape)}, the engine takes "
                                 f"{self.spec.shape(name)}; export an engine for this shape")
        if self._graph is None:
            with torch.no_grad():
                outputs = self.runner(**{n: feeds[n] for n in self.spec.input_names})
        else:
            for name, buf in self.inputs.items():
                if feeds[name] is not buf:
                    buf.copy_(feeds[name])
            outputs = self._graph()
        return dict(zip(self.spec.output_names, outputs))

    def close(self) -> None:
        self._graph = None
        self.runner = None
        self._weights_from = None
