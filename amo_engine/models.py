"""Load SD3 / FLUX diffusers pipelines from a local folder, an HF-cache model id, or a preset.

One code path for all three: presets are saved folders (see presets.py) loaded like real ones.
Weights load only from safetensors; no remote code is ever trusted. ``HF_HUB_OFFLINE=1`` is
honoured by huggingface_hub for model ids.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import quiet
from .families import Family, by_pipeline_class
from .presets import PRESET_SIZE_FACTORS, PRESETS, ModelSettings, ensure_preset

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


def family_of_folder(folder: Path) -> Family:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    return by_pipeline_class(json.loads(index.read_text()).get("_class_name", ""), where=f"{folder}: ")


def import_own_components(folder: Path) -> None:
    """Import the amo_engine modules a folder's model_index.json names (the glyph autoencoder), so
    diffusers' loader finds their classes. Only this package's own modules; never remote code."""
    import importlib

    for entry in json.loads((folder / "model_index.json").read_text()).values():
        if isinstance(entry, list) and entry and isinstance(entry[0], str) and entry[0].startswith("amo_engine."):
            importlib.import_module(entry[0])


def resolve_folder(model: str, cache_dir: Path | str | None = None) -> Path:
    """Local folder for a preset name, a folder path, or a model id already in the HF cache."""
    if model in PRESETS:
        return ensure_preset(model, cache_dir)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{model} is a file; pass the pipeline folder (the one with model_index.json)")
        return path
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_id:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError) as err:
            raise ValueError(
                f"model id {model!r} is not in the local Hugging Face cache and amo-engine never downloads; "
                f"fetch it first with: hf download {model}   (or pass a local folder)"
            ) from err
    if "/" in model or model.startswith((".", "~")):
        raise ValueError(f"model folder {model} does not exist; pass a diffusers pipeline folder "
                         f"(the one with model_index.json) or a preset: {', '.join(PRESETS)}")
    raise ValueError(f"unknown model {model!r}: use a preset ({', '.join(PRESETS)}), a folder path, or an HF model id")


def size_limits(model: str, cache_dir: Path | str | None = None) -> tuple[int, int | None] | None:
    """(pixels per image token side, the largest side in pixels or None) for ``model``, read from
    config JSON only — no diffusers import, no weights, no preset built — so bad sizes fail early.
    None when it cannot be told yet (a model id not in the cache)."""
    from .presets import SHIPPED, preset_folder

    path = preset_folder(model, cache_dir) if model in PRESETS else Path(model).expanduser()
    if model in PRESETS and model not in SHIPPED and not (path / "model_index.json").is_file():
        return PRESET_SIZE_FACTORS[model], None  # not built yet: its limit is told once it is
    if not path.is_dir():
        try:
            path = resolve_folder(model, cache_dir)
        except ValueError:
            return None
    try:
        family = family_of_folder(path)
        vae = json.loads((path / "vae" / "config.json").read_text())
        transformer = json.loads((path / "transformer" / "config.json").read_text())
    except (ValueError, OSError):
        return None
    factor = family.pixels_per_token(2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1),
                                     transformer.get("patch_size", 2))
    tokens = family.max_tokens_per_side(transformer)
    return factor, (tokens * factor if tokens else None)


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
