"""Load SD3 / FLUX diffusers pipelines from a local folder, an HF-cache model id, or a preset.

One code path for all three: presets are saved folders (see presets.py) loaded like real ones;
folders.py finds them (torch-free, so names and sizes are judged before anything heavy loads).
Weights load only from safetensors; no remote code is ever trusted. ``HF_HUB_OFFLINE=1`` is
honoured by huggingface_hub for model ids.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from amo_engine import quiet
from amo_engine.model.families import Family
from amo_engine.model.folders import family_of_folder, import_own_components, resolve_folder
from amo_engine.model.presets import ModelSettings

quiet.install()  # before any diffusers pipeline import: no look-alike failure lines on a healthy load



@dataclass
class LoadedModel:
    pipe: object  # a diffusers StableDiffusion3Pipeline or FluxPipeline
    family: Family  # what differs between SD3 and FLUX (families/)
    source: str  # what the user named (preset, path or id)
    folder: Path | None  # local folder the weights came from, if known
    settings: ModelSettings

    @property
    def max_sequence_length(self) -> int:
        return self.settings.max_sequence_length or self.family.max_sequence_length

    @property
    def default_size(self) -> tuple[int, int]:
        return self.settings.height or self.family.size, self.settings.width or self.family.size

    @property
    def default_guidance(self) -> float:
        return self.settings.guidance or self.family.default_guidance(self.pipe.transformer.config)


DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of fp32, fp16, bf16") from None


def load_model(
    model: str,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    cache_dir: Path | str | None = None,
) -> LoadedModel:
    """Load the diffusers pipeline for ``model`` onto ``device`` in ``dtype``."""
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    folder = resolve_folder(model, cache_dir)
    family = family_of_folder(folder)
    config_file = folder / "transformer" / "config.json"
    if config_file.is_file():
        for note in family.precision_notes(json.loads(config_file.read_text()), dtype):
            warnings.warn(note, stacklevel=2)
    import_own_components(folder)
    try:
        pipe = family.pipeline_type().from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load the pipeline in {folder}: {err}. amo-engine loads safetensors weights only (no pickle); "
            "convert .bin/.pt weights with save_pretrained(safe_serialization=True)"
        ) from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe, family, model, folder, ModelSettings.read(folder))
