"""amo-engine: AMO sampling for SD3 / FLUX transformers, eager or exported to ONNX / TensorRT."""

__version__ = "0.1.0"
