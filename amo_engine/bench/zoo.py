"""The benchmark's models and the reference-style AMO it is compared with.

* ``ARCHITECTURES``: random-init transformers per family and scale. ``medium`` (~70 M parameters,
  512 px: 1024 image tokens; one eager call ~0.5-1.5 s on 2 cores) runs on CPUs; ``released`` has
  the shapes of SD3-medium and FLUX.1-dev (GPU only); ``tiny`` checks GPU scripts on a CPU (bench/gpu_run.py --smoke).
* ``bench_model``: the LoadedModel a CPU bench config runs (a tiny preset, or a tiny preset's
  encoders and VAE around a medium transformer, so whole pipelines run through the same code).
* ``ReferenceScoreProcessor``: AMO as its official release computes the map (explicit full softmax
  in the hooked block, one map shared by the batch) — the cost users pay without amo-engine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from amo_engine.model.families import Family, family_named

MEDIUM_SIZE = 512  # pixels: 1024 image tokens

ARCHITECTURES = {
    ("sd3", "tiny"): dict(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                          num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                          pooled_projection_dim=32, out_channels=16, pos_embed_max_size=16),
    ("flux", "tiny"): dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                           guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
    ("sd3", "medium"): dict(sample_size=64, patch_size=2, in_channels=16, num_layers=8, attention_head_dim=64,
                            num_attention_heads=8, caption_projection_dim=512, out_channels=16, pos_embed_max_size=96),
    ("flux", "medium"): dict(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
                             num_attention_heads=8, guidance_embeds=True, axes_dims_rope=(8, 28, 28)),
    ("sd3", "released"): dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                              num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                              pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
    ("flux", "released"): dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                               attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                               pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
}
CLIP_TOKENS = 77  # the released models' CLIP context


def released_text_tokens(family: Family) -> int:
    """Text tokens per row of the released model at its default T5 length (SD3 333, FLUX.1-dev 512)."""
    return family.text_length(CLIP_TOKENS, family.max_sequence_length)


def build_transformer(family: Family, scale: str, device: str = "cpu", dtype: torch.dtype = torch.float32, **widths):
    """A random-init (seed 0) transformer of ``family`` at ``scale``; ``widths`` override the text-side
    widths (joint_attention_dim, pooled_projection_dim) so it fits a given pipeline's encoders."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: a released FLUX is 24 GB in bf16, not 48
    try:
        with torch.device(device):
            return family.transformer_type()(**{**ARCHITECTURES[family.name, scale], **widths}).eval()
    finally:
        torch.set_default_dtype(default)


def bench_model(config: str, cache_dir=None, folder=None):
    """The LoadedModel a bench config (``tiny-sd3`` ... ``medium-flux``) runs. A medium model is built
    in memory, or, with ``folder``, saved there and loaded back like any model folder (so engines
    exported from it can load their stages from it)."""
    import json

    from amo_engine.model.load import LoadedModel, load_model
    from amo_engine.model.presets import SETTINGS_FILE, ModelSettings

    scale, name = config.split("-")
    model = load_model(f"tiny-{name}", cache_dir=cache_dir)
    if scale == "tiny":
        return model
    tiny = model.pipe.transformer.config
    model.pipe.transformer = build_transformer(family_named(name), scale, joint_attention_dim=tiny.joint_attention_dim,
                                               pooled_projection_dim=tiny.pooled_projection_dim)
    settings = ModelSettings(model.settings.max_sequence_length, MEDIUM_SIZE, MEDIUM_SIZE)
    if folder is None:
        return LoadedModel(model.pipe, model.family, config, None, settings)
    model.pipe.save_pretrained(folder, safe_serialization=True)
    (Path(folder) / SETTINGS_FILE).write_text(json.dumps(settings.to_json(), indent=2))
    return load_model(str(folder))


class ReferenceScoreProcessor:
    """As the official AMO release: explicit full softmax(QK^T) in the hooked block, the text->image
    quadrant summed over span rows, one map shared by the whole batch."""

    def __init__(self, family: Family, sink: list, span_mask: torch.Tensor | None):
        self.family, self.sink, self.span_mask = family, sink, span_mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kw):
        from amo_engine.model.attention import joint, project

        n_img, first_img = hidden_states.shape[1], self.family.image_first
        qkv = project(attn, hidden_states, encoder_hidden_states, image_rotary_emb, first_img)
        q, k = joint(qkv.img_q, qkv.txt_q, first_img), joint(qkv.img_k, qkv.txt_k, first_img)  # [B, H, L, D]
        probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [B, H, L, L]
        out = probs @ joint(qkv.img_v, qkv.txt_v, first_img)  # [B, H, L, D]
        n_txt = encoder_hidden_states.shape[1]
        txt, img = (slice(n_img, None), slice(0, n_img)) if first_img else (slice(0, n_txt), slice(n_txt, None))
        quadrant = probs[:, :, txt, img]  # [B, H, T, N]
        self.sink.append((quadrant * self.span_mask[:, None, :, None]).sum(2).mean((0, 1)))  # one map per batch
        out = out.transpose(1, 2).flatten(2)  # [B, L, C]
        t_out, i_out = out[:, txt], out[:, img]
        i_out = attn.to_out[1](attn.to_out[0](i_out))
        if getattr(attn, "context_pre_only", False):  # the last SD3 block keeps no text stream
            return i_out, t_out
        return i_out, attn.to_add_out(t_out)


STOCK_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids",
                "guidance")


def stock_feeds(feeds: dict) -> dict:
    """The feeds a stock diffusers transformer takes (no span mask)."""
    return {k: v for k, v in feeds.items() if k in STOCK_INPUTS}


def reference_amo(transformer, family: Family, blocks, stock_procs: dict | None = None):
    """``feeds -> (velocity, map)`` running ``transformer`` with reference processors in ``blocks``:
    the map is one per batch (the official code's), expanded to the rows for the sampler."""
    sink: list = []
    procs = []
    joint_attns, _ = family.attentions(transformer)
    for i in blocks:
        p = ReferenceScoreProcessor(family, sink, None)
        joint_attns[i].set_processor(p)
        procs.append(p)

    def call(feeds):
        sink.clear()
        for p in procs:
            p.span_mask = feeds["span_mask"]
        v = transformer(**stock_feeds(feeds), return_dict=False)[0]
        return v, torch.stack(sink).mean(0).expand(v.shape[0], -1)  # [B, N]: the shared map

    return call
