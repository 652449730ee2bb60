"""Offline presets ``tiny-sd3`` and ``tiny-flux``: complete diffusers pipelines with small
random-init weights from a fixed seed, built without any download and saved with
``save_pretrained`` so they load back through the same code path as real weights.

Tokenizers: CLIP uses the real CLIP BPE vocabulary (its merges file ships in the package data); T5 uses a
small SentencePiece unigram model trained here, deterministically, on the AMO prompts.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


from amo_engine.atomic import temp_dir_beside, usual_permissions
from amo_engine.model.glyph.variants import CELL, VARIANTS as SHIPPED  # the models trained here, shipped as package data

PRESETS = ("tiny-sd3", "tiny-flux", "tiny-sd35", "tiny-auraflow", *SHIPPED)
PRESET_SIZE_FACTORS = {"tiny-sd3": 16, "tiny-flux": 16, "tiny-sd35": 16, "tiny-auraflow": 16,
                       **{name: CELL for name in SHIPPED}}  # pixels per image token side
PRESET_VERSION = 1
PRESET_SEED = 0
SETTINGS_FILE = "amo_engine.json"  # per-model defaults (text length, size) read by the pipeline

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
CLIP_BPE_FILE = "data/clip_bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges (MIT licence, OpenAI)
TINY_T5_MAX_LENGTH = 64
TINY_SIZE = 128


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "amo-engine"


def prompts() -> list[str]:
    """The AMO paper's 100 evaluation prompts (package data)."""
    text = resources.files("amo_engine").joinpath("data/amo_prompts.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- tokenizers


def _byte_to_unicode() -> dict[int, str]:
    """The printable-unicode alphabet byte-level BPE vocabularies use for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {byte: chr(byte) for byte in keep}  # insertion order = CLIP's token ids
    extra = (byte for byte in range(256) if byte not in mapping)
    for n, byte in enumerate(extra):
        mapping[byte] = chr(256 + n)
    return mapping


def build_clip_tokenizer(max_length: int = CLIP_MAX_LENGTH):
    """A real CLIP tokenizer (49408 tokens) from CLIP's BPE merges file (package data)."""
    from transformers import CLIPTokenizer

    raw = resources.files("amo_engine").joinpath(CLIP_BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48894 merges, as in CLIP
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    alphabet = list(_byte_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_t5_tokenizer(vocab_size: int = 600):
    """A small T5 (unigram) tokenizer trained offline and deterministically on the AMO prompts."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from transformers import T5Tokenizer

    corpus = prompts() + [
        "".join(chr(c) for c in range(ord(" "), ord("~") + 1)),
        "the a an of and to in with on for is it that this at by from",
    ]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    proto = model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    vocab = [(p.piece, float(p.score)) for p in proto.pieces]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


# ---------------------------------------------------------------- tiny components


def _clip_text_config(projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
    )
    return T5EncoderModel(cfg)


def _tiny_vae(shift: float, scale: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=TINY_SIZE,
        shift_factor=shift,
        scaling_factor=scale,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_sd3_transformer(**sd35):
    """SD3 MMDiT, 4 joint blocks, 4 heads x 8, joint dim 32 (random init: seed first); ``sd35``:
    SD3.5's options (qk_norm, dual_attention_layers)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=TINY_SIZE // 8,
        patch_size=2,
        in_channels=16,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=64,
        **sd35,
    )


TINY_SD35 = {"qk_norm": "rms_norm", "dual_attention_layers": (0, 1)}  # SD3.5-Medium's MMDiT-X in blocks 0, 1


def tiny_auraflow_transformer():
    """AuraFlow, 2 joint MMDiT + 2 single DiT blocks, 4 heads x 8, joint dim 32 (random init)."""
    from diffusers import AuraFlowTransformer2DModel

    return AuraFlowTransformer2DModel(
        sample_size=TINY_SIZE // 8,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=2,
        num_single_dit_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=64,
    )


def tiny_flux_transformer():
    """FLUX, 2 double- + 2 single-stream blocks, 2 heads x 16, guidance-distilled (random init)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )


def _eval(pipe):
    """Inference mode for every module, as from_pretrained leaves them (no dropout)."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def build_tiny_sd3(seed: int = PRESET_SEED, **sd35):
    """A complete StableDiffusion3Pipeline with tiny random weights (CLIP-L, CLIP-G, T5, VAE);
    ``sd35``: the transformer's SD3.5 options (TINY_SD35 for the tiny-sd35 preset)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_tok = build_clip_tokenizer()
    t5_tok = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = tiny_sd3_transformer(**sd35)
    text_encoder = CLIPTextModelWithProjection(_clip_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config())
    text_encoder_3 = _t5_encoder(len(t5_tok))
    vae = _tiny_vae(shift=0.0609, scale=1.5305)
    return _eval(StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tok,
    ))


def build_tiny_flux(seed: int = PRESET_SEED):
    """A complete FluxPipeline (guidance-distilled, like FLUX.1-dev) with tiny random weights."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    clip_tok = build_clip_tokenizer()
    t5_tok = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = tiny_flux_transformer()
    text_encoder = CLIPTextModel(_clip_text_config())
    text_encoder_2 = _t5_encoder(len(t5_tok))
    vae = _tiny_vae(shift=0.1159, scale=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return _eval(FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
    ))


def build_tiny_auraflow(seed: int = PRESET_SEED):
    """A complete AuraFlowPipeline with tiny random weights (UMT5 encoder, 4-channel VAE without shift)."""
    import torch
    from diffusers import AuraFlowPipeline, AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    t5_tok = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = tiny_auraflow_transformer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(t5_tok), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=TINY_SIZE, scaling_factor=0.13025,
    )
    return _eval(AuraFlowPipeline(tokenizer=t5_tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=1.73)))


PRESET_BUILDERS = {
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
    "tiny-sd35": lambda: build_tiny_sd3(**TINY_SD35),
    "tiny-auraflow": build_tiny_auraflow,
}


@dataclass(frozen=True)
class ModelSettings:
    """Defaults a model folder may carry in amo_engine.json (real folders fall back to family
    defaults). A model trained on a closed word list (the glyph model) also names its vocabulary,
    its held-out words and the prompt it was trained on."""

    max_sequence_length: int | None = None
    height: int | None = None
    width: int | None = None
    guidance: float | None = None
    vocabulary: tuple[str, ...] | None = None  # words the model was trained to render
    held_out: tuple[str, ...] | None = None  # words kept out of training (generalisation checks)
    prompt_template: str | None = None  # e.g. "a {tone} sign that says '{word}'"
    tones: tuple[str, ...] | None = None  # values of {tone} in the template
    textures: tuple[str, ...] | None = None  # values of {texture} in the template (ground texture classes)
    sign_rows: tuple[int, ...] | None = None  # cell rows the sign always occupies (the other rows are ground)
    edit_blocks: tuple[int, ...] | None = None  # joint blocks whose text K/V decide the word (amo-engine localize)
    edit_start_step: int | None = None  # the first step the text K/V swap is on

    @classmethod
    def read(cls, folder: Path) -> "ModelSettings":
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if v is not None}


def preset_folder(name: str, cache_dir: Path | str | None = None) -> Path:
    """Where preset ``name`` lives (package data for the models trained here, else the cache), built or not."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name in SHIPPED:
        return Path(str(resources.files("amo_engine").joinpath(SHIPPED[name].folder)))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{name}-v{PRESET_VERSION}-seed{PRESET_SEED}"


def ensure_preset(name: str, cache_dir: Path | str | None = None) -> Path:
    """Folder of preset ``name``, built and saved on first use (atomically: temp dir, then rename)."""
    folder = preset_folder(name, cache_dir)
    if name in SHIPPED:
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"the {name} model is missing from {folder}; reinstall amo-engine")
        return folder
    if (folder / "model_index.json").is_file():
        return folder
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    pipe = PRESET_BUILDERS[name]()
    tmp = temp_dir_beside(folder, f".{name}-")
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        settings = {"max_sequence_length": TINY_T5_MAX_LENGTH, "height": TINY_SIZE, "width": TINY_SIZE}
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        usual_permissions(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
