"""amo-engine: AMO sampling for SD3 / FLUX / AuraFlow transformers, eager or exported to ONNX Runtime,
AOTInductor or TensorRT. ``from amo_engine import AmoFlowPipeline`` is the Python API
(``pipeline/api.py``); it loads on first use, so ``import amo_engine`` stays light."""

from amo_engine.threads import prefer_passive_waits

__version__ = "0.1.0"
__all__ = ["AmoFlowPipeline", "AmoOutput", "__version__"]

prefer_passive_waits()  # before torch loads OpenMP: a busy neighbour then costs its share, not 20x (threads.py)


def __getattr__(name: str):
    if name in ("AmoFlowPipeline", "AmoOutput"):  # the front door names the API; imported on first use
        from amo_engine.pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'amo_engine' has no attribute {name!r}")
