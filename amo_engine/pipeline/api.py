"""The Python API, in the diffusers idiom.

``AmoFlowPipeline.from_pretrained(name_or_folder, engine=..., backend=...)`` loads a pipeline (a
preset, a diffusers folder or a cached Hugging Face id; optionally running its transformer from an
exported engine); calling it with a prompt and sampler options returns PIL images and the AMO
attention maps. ``AmoFlowPipeline.from_diffusers(pipe)`` adds AMO to a diffusers pipeline you have
already loaded: our attention processors sit on its blocks only during our calls, so ``pipe(...)``
elsewhere in your code runs exactly as before.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from amo_engine.model.backbone import HookConfig
from amo_engine.model.families import of_transformer
from amo_engine.model.load import LoadedModel
from amo_engine.model.presets import ModelSettings
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig
from amo_engine.pipeline.runtime import Runtime, open_pipeline

DTYPE_FLAGS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class AmoOutput:
    images: list  # PIL images, prompt-major (num_images_per_prompt of each prompt)
    attention_maps: torch.Tensor  # [n, grid_h, grid_w]: where the quoted text attended, averaged over steps
    sampler: str  # the sampler that ran (amo falls back to overshoot on a prompt without quoted text)
    warnings: list[str] = field(default_factory=list)


class AmoFlowPipeline:
    """Text-to-image with the Euler, overshoot or AMO sampler on any supported rectified-flow pipeline."""

    def __init__(self, pipeline: AmoPipeline, resources: contextlib.ExitStack | None = None):
        self.pipeline = pipeline
        self._resources = resources

    @classmethod
    def from_pretrained(cls, model: str | Path = "glyph", *, engine: str | Path | None = None,
                        backend: str | None = None, device: str = "cpu", torch_dtype: torch.dtype = torch.float32,
                        cache_dir: str | Path | None = None, threads: int | None = None) -> "AmoFlowPipeline":
        """``model``: a preset name, a diffusers folder or a model id in the Hugging Face cache.
        ``engine``: an engine folder from ``amo-engine export``; ``backend``: eager (the default
        without an engine), ort (the default with one), aoti, trt or auto."""
        if torch_dtype not in DTYPE_FLAGS:
            raise ValueError(f"torch_dtype must be one of torch.float32, torch.float16, torch.bfloat16; got {torch_dtype}")
        runtime = Runtime(model=str(model), backend=backend or ("eager" if engine is None else "ort"),
                          engine=None if engine is None else Path(engine), device=device,
                          dtype=DTYPE_FLAGS[torch_dtype], cache_dir=None if cache_dir is None else Path(cache_dir),
                          threads=threads)
        if runtime.backend != "eager" and engine is None:
            raise ValueError(f"backend {runtime.backend!r} runs an exported engine: pass engine=<folder from "
                             f"amo-engine export>, or backend='eager'")
        resources = contextlib.ExitStack()
        with resources:
            pipeline = resources.enter_context(open_pipeline(runtime))
            return cls(pipeline, resources.pop_all())

    @classmethod
    def from_diffusers(cls, pipe, *, blocks: Sequence[int] | None = None, max_span_tokens: int = 64,
                       height: int | None = None, width: int | None = None) -> "AmoFlowPipeline":
        """AMO for a diffusers pipeline you loaded (StableDiffusion3Pipeline, FluxPipeline or
        AuraFlowPipeline). ``pipe`` is not changed: the hook is installed for each of our calls and
        removed after it. ``blocks``: the joint blocks that feed AMO's map (default: all)."""
        family = of_transformer(pipe.transformer)  # names the supported classes for any other
        settings = ModelSettings(height=height, width=width)
        model = LoadedModel(pipe, family, type(pipe).__name__, None, settings)
        hook = HookConfig(hooked_blocks=None if blocks is None else tuple(blocks), max_span_tokens=max_span_tokens)
        return cls(AmoPipeline(model, hook))

    def __call__(self, prompt: str | Sequence[str], *, sampler: str = "amo", c: float = 2.0,
                 num_inference_steps: int = 28, guidance_scale: float | None = None, height: int | None = None,
                 width: int | None = None, negative_prompt: str | None = None, num_images_per_prompt: int = 1,
                 seed: int | Sequence[int] = 10, max_sequence_length: int | None = None,
                 lora: str | Path | Sequence[str | Path | None] | None = None, lora_scale: float = 1.0,
                 progress: bool = False) -> AmoOutput:
        """Generate. ``sampler``: euler, overshoot or amo, ``c`` their overshoot strength; ``seed``:
        one int (image i gets seed + i) or one per prompt. Defaults for size and guidance are the model's.
        ``lora``: a diffusers LoRA file for every prompt, or one per prompt (None: no adapter), at
        ``lora_scale`` (an engine needs ``export --lora-slots``)."""
        from amo_engine.model.adapters import read_adapter

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        adapters = None
        if lora is not None:
            model = self.pipeline.model
            files = [lora] if isinstance(lora, (str, Path)) else list(lora)
            adapters = [None if f is None else read_adapter(f, model.family, model.pipe.transformer.config, lora_scale)
                        for f in files]
        result = self.pipeline(GenerateConfig(
            prompts, negative_prompt=negative_prompt, height=height, width=width, steps=num_inference_steps,
            guidance=guidance_scale, sampler=sampler, c=c, seed=seed, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length, progress=progress, adapters=adapters))
        return AmoOutput(result.images, result.attn_map, result.sampler, result.warnings)

    def close(self) -> None:
        """Release the engine's backend (a no-op for eager pipelines)."""
        if self._resources is not None:
            self._resources.close()
            self._resources = None

    def __enter__(self) -> "AmoFlowPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
