"""The untrained glyph pipeline: a real diffusers ``StableDiffusion3Pipeline`` at toy size.

Components: two tiny frozen CLIP text encoders (real CLIP BPE vocabulary, 16-token context), a
tiny T5 encoder whose unigram tokenizer spells every quoted word letter by letter (one token per
letter, the template's words as whole pieces), an ``SD3Transformer2DModel`` of 6 joint blocks, the
exact pixel-unshuffle autoencoder, and a flow-matching scheduler. Training (train.py) fits the
transformer and T5; everything else stays as built here from the seed.

One token per letter is what lets an image token pick its letter: the image token in cell ``i + 1``
of the sign attends to the text token of letter ``i``, which T5's relative attention tells apart
from the others by its distance to the opening quote (32 buckets: distances up to 7 are exact).
A word-level token would hand every image token the same mixture of all its letters. Letters are
shared by all words, so held-out words are made of letters the model has drawn at every slot.
"""

from __future__ import annotations

import string

import torch

from amo_engine.model.glyph.variants import GLYPH, Variant
from amo_engine.model.glyph.words import TONES, TRAIN_WORDS

CLIP_LENGTH = 16  # CLIP context (both models); T5's length is the variant's (glyph: 16, its longest prompt needs 13)
LATENT_FACTOR = 4  # pixel-unshuffle factor
LATENT_CHANNELS = LATENT_FACTOR**2  # grey
CLIP_DIM, T5_DIM, MODEL_HEADS, HEAD_DIM, LAYERS = 32, 64, 4, 32, 6
GUIDANCE = 3.0  # the glyph model's default classifier-free guidance
TEMPLATE_PIECES = ("▁a", "▁sign", "▁that", "▁says") + tuple(f"▁{t}" for t in TONES)
TEXTURE_PIECES = ("▁on",)  # and one piece per texture name: appended after the glyph model's vocabulary
RELATIVE_BUCKETS = 32  # T5 relative-position buckets: 16 each way, distances 0-7 exact


def build_t5_letter_tokenizer(variant: Variant = GLYPH):
    """Unigram tokenizer: the template's words are whole pieces; any other text, the quoted word
    included, splits into characters (``'HAPPY'`` -> ``▁'`` ``H`` ``A`` ``P`` ``P`` ``Y`` ``'``).
    A variant with textures appends ``▁on`` and its texture names as whole pieces after the glyph
    vocabulary, so every glyph token keeps its id (the scene model starts from glyph's weights)."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    vocab += [(p, -3.0) for p in TEMPLATE_PIECES]
    vocab += [("▁'", -3.0), ("'", -3.0), ('▁"', -3.0), ('"', -3.0)]
    vocab += [(f"▁{c}", -9.0) for c in chars if c not in "'\""] + [(c, -10.0) for c in chars if c not in "'\""]
    if variant.textures:
        vocab += [(p, -3.0) for p in TEXTURE_PIECES + tuple(f"▁{t}" for t in variant.textures)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_encoder():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from amo_engine.model.presets import CLIP_VOCAB_SIZE

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=CLIP_DIM, intermediate_size=2 * CLIP_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_LENGTH, projection_dim=CLIP_DIM, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=T5_DIM, d_ff=2 * T5_DIM, d_kv=T5_DIM // 4, num_layers=2, num_heads=4,
        relative_attention_num_buckets=RELATIVE_BUCKETS,
        relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
    ))


def _transformer(variant: Variant):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=variant.width // LATENT_FACTOR, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=LAYERS,
        attention_head_dim=HEAD_DIM, num_attention_heads=MODEL_HEADS, joint_attention_dim=T5_DIM,
        caption_projection_dim=MODEL_HEADS * HEAD_DIM, pooled_projection_dim=2 * CLIP_DIM,
        out_channels=LATENT_CHANNELS, pos_embed_max_size=max(variant.height, variant.width) // LATENT_FACTOR // 2,
    )


def latent_stats(variant: Variant = GLYPH) -> tuple[float, float]:
    """(shift, scale) that bring the autoencoder's latents of training images to mean 0, std 1."""
    import numpy as np

    from amo_engine.model.glyph.render import render_batch

    rng = np.random.default_rng(0)
    words = [TRAIN_WORDS[i % len(TRAIN_WORDS)] for i in range(512)]
    tones = [TONES[i % len(TONES)] for i in range(512)]
    textures = [variant.textures[i % len(variant.textures)] for i in range(512)] if variant.textures else None
    pixels = torch.from_numpy(render_batch(words, tones, rng, variant, textures))  # [512, 1, H, W]; grey = latents' values
    mean, std = float(pixels.mean()), float(pixels.std())
    return round(mean, 4), round(1.0 / std, 4)


def build_glyph_pipeline(seed: int = 0, variant: Variant = GLYPH):
    """A complete, untrained StableDiffusion3Pipeline for a glyph model (random init from ``seed``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from amo_engine.model.presets import build_clip_tokenizer
    from amo_engine.model.glyph.autoencoder import PixelUnshuffleAutoencoder

    t5_tok = build_t5_letter_tokenizer(variant)
    shift, scale = latent_stats(variant)
    torch.manual_seed(seed)
    t5 = _t5_encoder(len(t5_tok))
    pipe = StableDiffusion3Pipeline(
        transformer=_transformer(variant),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=PixelUnshuffleAutoencoder(latent_channels=LATENT_CHANNELS, block_out_channels=(LATENT_CHANNELS,) * 3,
                                      scaling_factor=scale, shift_factor=shift),
        text_encoder=_clip_encoder(),
        tokenizer=build_clip_tokenizer(CLIP_LENGTH),
        text_encoder_2=_clip_encoder(),
        tokenizer_2=build_clip_tokenizer(CLIP_LENGTH),
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
