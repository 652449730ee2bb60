"""The untrained glyph pipeline: a real diffusers ``StableDiffusion3Pipeline`` at toy size.

Components: two tiny frozen CLIP text encoders (real CLIP BPE vocabulary, 16-token context), a
tiny T5 encoder with a word-level unigram tokenizer (every training and held-out word is one
token; other text falls back to single characters), an ``SD3Transformer2DModel`` of 6 joint
blocks, the exact pixel-unshuffle autoencoder, and a flow-matching scheduler. Training (train.py)
fits the transformer and T5; everything else stays as built here from the seed.

Word tokens start from their **spelling**: the embedding of a word is a fixed random code of its
first letter in dimensions 0-9, of its second letter in 10-19, and so on (6 slots of 10). Letters
are then linearly readable from every word token, so what the transformer learns about drawing a
letter at a slot is shared by all words — including held-out words, whose tokens keep their
spelled init because no gradient ever reaches them.
"""

from __future__ import annotations

import string

import torch

from .render import HEIGHT, WIDTH
from .words import HELD_OUT_WORDS, TONES, TRAIN_WORDS

TEXT_LENGTH = 16  # CLIP context and T5 length: the longest training prompt needs 13 T5 / 12 CLIP tokens
LATENT_FACTOR = 4  # pixel-unshuffle factor
LATENT_CHANNELS = LATENT_FACTOR**2  # grey
CLIP_DIM, T5_DIM, MODEL_HEADS, HEAD_DIM, LAYERS = 32, 64, 4, 32, 6
GUIDANCE = 3.0  # the glyph model's default classifier-free guidance
TEMPLATE_PIECES = ("▁a", "▁sign", "▁that", "▁says") + tuple(f"▁{t}" for t in TONES)
SPELL_SLOT = 10  # embedding dimensions per letter slot in a word token's spelled init


def build_t5_word_tokenizer():
    """Unigram tokenizer: every training or held-out word is one piece; other text splits into characters."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    vocab += [(p, -3.0) for p in TEMPLATE_PIECES]
    vocab += [("▁'", -3.0), ("'", -3.0), ('▁"', -3.0), ('"', -3.0)]
    vocab += [(w, -4.0) for w in TRAIN_WORDS + HELD_OUT_WORDS]
    vocab += [(f"▁{c}", -9.0) for c in chars] + [(c, -10.0) for c in chars if c not in "'\""]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_encoder():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ..presets import CLIP_VOCAB_SIZE

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=CLIP_DIM, intermediate_size=2 * CLIP_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, projection_dim=CLIP_DIM, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=T5_DIM, d_ff=2 * T5_DIM, d_kv=T5_DIM // 4, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
    ))


def _transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=WIDTH // LATENT_FACTOR, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=LAYERS,
        attention_head_dim=HEAD_DIM, num_attention_heads=MODEL_HEADS, joint_attention_dim=T5_DIM,
        caption_projection_dim=MODEL_HEADS * HEAD_DIM, pooled_projection_dim=2 * CLIP_DIM,
        out_channels=LATENT_CHANNELS, pos_embed_max_size=max(HEIGHT, WIDTH) // LATENT_FACTOR // 2,
    )


def spell_words_into(embedding: torch.nn.Embedding, tokenizer, seed: int) -> None:
    """Overwrite each word token's embedding row with its spelling: a fixed random code of the
    letter at position i in dimensions [10 i, 10 i + 10); unused slots stay 0."""
    gen = torch.Generator().manual_seed(seed + 1)
    codes = torch.randn(26, SPELL_SLOT, generator=gen)  # [26 letters, slot]
    dim = embedding.weight.shape[1]
    with torch.no_grad():
        for word in TRAIN_WORDS + HELD_OUT_WORDS:
            if len(word) * SPELL_SLOT > dim:
                raise ValueError(f"{word} has more letters than the T5 width {dim} holds ({dim // SPELL_SLOT})")
            row = torch.zeros(dim)  # [D]
            for i, ch in enumerate(word):
                row[i * SPELL_SLOT : (i + 1) * SPELL_SLOT] = codes[ord(ch) - ord("A")]
            embedding.weight[tokenizer.convert_tokens_to_ids(word)] = row


def latent_stats() -> tuple[float, float]:
    """(shift, scale) that bring the autoencoder's latents of training images to mean 0, std 1."""
    import numpy as np

    from .render import render_batch

    rng = np.random.default_rng(0)
    words = [TRAIN_WORDS[i % len(TRAIN_WORDS)] for i in range(512)]
    tones = [TONES[i % len(TONES)] for i in range(512)]
    pixels = torch.from_numpy(render_batch(words, tones, rng))  # [512, 1, H, W]; grey = latents' values
    mean, std = float(pixels.mean()), float(pixels.std())
    return round(mean, 4), round(1.0 / std, 4)


def build_glyph_pipeline(seed: int = 0):
    """A complete, untrained StableDiffusion3Pipeline for the glyph model (random init from ``seed``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from ..presets import build_clip_tokenizer
    from .autoencoder import PixelUnshuffleAutoencoder

    t5_tok = build_t5_word_tokenizer()
    shift, scale = latent_stats()
    torch.manual_seed(seed)
    t5 = _t5_encoder(len(t5_tok))
    spell_words_into(t5.get_input_embeddings(), t5_tok, seed)
    pipe = StableDiffusion3Pipeline(
        transformer=_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=PixelUnshuffleAutoencoder(latent_channels=LATENT_CHANNELS, block_out_channels=(LATENT_CHANNELS,) * 3,
                                      scaling_factor=scale, shift_factor=shift),
        text_encoder=_clip_encoder(),
        tokenizer=build_clip_tokenizer(TEXT_LENGTH),
        text_encoder_2=_clip_encoder(),
        tokenizer_2=build_clip_tokenizer(TEXT_LENGTH),
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
