"""AOTInductor packages: ``torch.export`` of the flat backbone at an engine's fixed shapes, compiled
by AOTInductor into one ``.pt2`` file (weights inside), and loaded back without Python model code.

A package runs on the device kind it was compiled for (a CPU package on CPUs, a CUDA package on
GPUs of the kind it was built on) and with the torch version that built it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import torch

from amo_engine import quiet
from amo_engine.errors import BackendUnavailable

NO_COMPILER = "AOTInductor compiles C++ and finds no compiler: apt-get install -y g++ (or set CXX)"


def cpp_compiler() -> str | None:
    """The C++ compiler AOTInductor will call (``$CXX``, else g++), or None when there is none."""
    import os

    return shutil.which(os.environ.get("CXX", "g++"))


def compile_package(backbone: torch.nn.Module, feeds: Mapping[str, torch.Tensor], path: Path | str,
                    embed_weights: bool = True, max_autotune: bool = False) -> Path:
    """Export ``backbone`` called on ``feeds`` (keyword inputs, their shapes fixed) and compile it
    to ``path``; the device is the one ``backbone`` and ``feeds`` are on. ``embed_weights`` False
    leaves the weights out (a package of code alone): ``load_package`` then takes them from the
    model, so a released-size model is not copied onto disk and into memory a second time."""
    if cpp_compiler() is None:
        raise BackendUnavailable(NO_COMPILER)
    with torch.no_grad(), quiet.torch_internals():
        program = torch.export.export(backbone, args=(), kwargs=dict(feeds), strict=False)
    options = {"aot_inductor.package_constants_in_so": embed_weights}
    if max_autotune:
        options["max_autotune"] = True
    with quiet.torch_internals():
        return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                             inductor_configs=options))


def load_package(path: Path | str, weights_from: torch.nn.Module | None = None):
    """The compiled callable of a ``.pt2`` package: ``runner(**feeds) -> (velocity, attn)``.
    ``weights_from``: the module the package was compiled from, whose parameters and buffers a
    package without embedded weights uses in place (no copy; keep the module alive)."""
    with quiet.torch_internals():
        runner = torch._inductor.aoti_load_package(str(path))
    if weights_from is not None:
        state = dict(weights_from.named_parameters()) | dict(weights_from.named_buffers())
        needed = runner.get_constant_fqns()
        missing = [n for n in needed if n not in state]
        if missing:
            raise ValueError(f"{path} needs weights the model does not have ({missing[:3]}...): "
                             "re-export the engine from this model")
        runner.load_constants({n: state[n] for n in needed}, check_full_update=True, user_managed=True)
    return runner


class CudaGraphCall:
    """``fn(**feeds)`` captured once in a CUDA graph and replayed: ``feeds`` must be the static
    tensors every later call writes its inputs into; each replay overwrites the returned outputs."""

    def __init__(self, fn, feeds: Mapping[str, torch.Tensor], warmup: int = 2):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):  # allocations and lazy initialisation happen outside the capture
                fn(**feeds)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.outputs = fn(**feeds)

    def __call__(self):
        self.graph.replay()
        return self.outputs
