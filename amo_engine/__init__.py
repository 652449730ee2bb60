"""amo-engine: AMO sampling for SD3 / FLUX transformers, eager or exported to ONNX / TensorRT."""

from amo_engine.threads import prefer_passive_waits

__version__ = "0.1.0"

prefer_passive_waits()  # before torch loads OpenMP: a busy neighbour then costs its share, not 20x (threads.py)
