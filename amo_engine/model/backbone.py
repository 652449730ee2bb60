"""Backbone modules: a diffusers transformer behind a flat, tensor-only forward in IOSpec names,
returning (velocity, attn), and with the modulation inputs also ``group_attn`` [B, G, N_img] (each
entity group's map, beside AMO's span map). The same module runs eagerly and is what gets exported.

``HookConfig`` says what the hook adds to the graph: the AMO score tap (always; ``hooked_blocks``
and ``max_span_tokens``) and the optional input groups declared in ``inputs.py`` (``kv_swap``:
Paper A's text K/V swap; ``modulation``: Paper B's knobs; ``lora_rank``: LoRA factors per row,
``lora.py``), whose identity fills reproduce the plain backbone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from amo_engine.model.attention import CONTEXT_KEY, CallContext, ContextFreeProcessor, GroupTap, JointAttnProcessor, KvSwap, SpanTap
from amo_engine.model.inputs import GROUPS, KV_SWAP, LORA, MODULATION
from amo_engine.model.lora import PROJECTIONS, LoraCall, layout_for
from amo_engine.model.modulation import Modulation
from amo_engine.spec import IOSpec, TensorSpec, dtype_name

if TYPE_CHECKING:
    from amo_engine.model.families.base import Family



@dataclass(frozen=True)
class HookConfig:
    """What the attention hook adds: which blocks carry the score tap and how many span rows it
    reads, and whether the graph takes the text K/V swap inputs (every joint block, gated)."""

    hooked_blocks: tuple[int, ...] | None = None  # None: every joint (SD3) / double-stream (FLUX) block
    max_span_tokens: int = 64  # fixed S of the side branch; longer spans are cut (pipeline warns)
    kv_swap: bool = False  # the graph takes inputs.KV_SWAP (text K/V swap)
    modulation: bool = False  # the graph takes inputs.MODULATION (Paper B's knobs, modulation.py)
    max_groups: int = 4  # G of the group one-hots
    modulation_path: str = "split"  # modulation.py: split (two SDPA calls) | augmented | explicit
    modulation_blocks: tuple[int, ...] | None = None  # joint blocks that modulate (None: all); others stay plain
    score_tap: bool = True  # False: no span_mask input and no attn output (the stock graph, for pricing the tap)
    lora_rank: int = 0  # > 0: the graph takes inputs.LORA, adapters up to this rank (lora.py)
    lora_blocks: tuple[int, ...] | None = None  # joint blocks with LoRA slots (None: all)
    lora_projections: tuple[str, ...] = PROJECTIONS  # their attention projections with LoRA slots


def resolve_blocks(n_blocks: int, hooked: Sequence[int] | None) -> tuple[int, ...]:
    if hooked is None:
        return tuple(range(n_blocks))
    blocks = tuple(sorted({int(i) for i in hooked}))
    if not blocks or blocks[0] < 0 or blocks[-1] >= n_blocks:
        raise ValueError(f"hooked blocks {list(hooked)} out of range: the model has joint blocks 0..{n_blocks - 1}")
    return blocks


class Fp32FluxPosEmbed(nn.Module):
    """FLUX RoPE computed in float32 (diffusers uses float64, which breaks export)."""

    def __init__(self, theta: int, axes_dim: Sequence[int]):
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = ids.float()  # [L, n_axes]
        cos_out, sin_out = [], []
        for i, dim in enumerate(self.axes_dim):
            exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=ids.device) / dim  # [dim/2]
            freqs = torch.outer(pos[:, i], 1.0 / (self.theta**exponent))  # [L, dim/2]
            cos_out.append(freqs.cos().repeat_interleave(2, dim=1))  # [L, dim]
            sin_out.append(freqs.sin().repeat_interleave(2, dim=1))
        return torch.cat(cos_out, dim=-1), torch.cat(sin_out, dim=-1)  # [L, sum(axes_dim)] each


@contextmanager
def hooked(transformer: nn.Module, family: Family, processors: Sequence[JointAttnProcessor],
           rope: nn.Module | None = None):
    """Run the transformer with our processors on its joint blocks (its other attentions' own
    processors wrapped to drop our context) and FLUX's fp32 RoPE for the duration of one call, then
    put back exactly what the user's model had: our hook never changes what the model does outside
    our calls."""
    joint_attns, other_attns = family.attentions(transformer)
    saved = [attn.processor for attn in joint_attns + other_attns]
    saved_rope = getattr(transformer, "pos_embed", None)
    try:
        for attn, proc in zip(joint_attns, processors):
            attn.processor = proc
        for attn in other_attns:
            attn.processor = ContextFreeProcessor(attn.processor)
        if rope is not None:
            transformer.pos_embed = rope
        yield
    finally:
        for attn, proc in zip(joint_attns + other_attns, saved):
            attn.processor = proc
        if rope is not None:
            transformer.pos_embed = saved_rope


class _Backbone(nn.Module):
    """The flat forward of one family's transformer. Built by that family (``Family.backbone``), which
    hands itself in: this module reads the family's rules and never imports the families."""

    def __init__(self, transformer: nn.Module, family, hook: HookConfig = HookConfig(), vae_scale_factor: int = 8):
        super().__init__()
        self.family = family  # families.Family: joint blocks, joint order, timestep rule, text registers
        self.transformer = transformer
        self.hook = hook
        self.vae_scale_factor = vae_scale_factor  # pixels per latent pixel (the pipeline's VAE)
        # joint (SD3, AuraFlow) / double-stream (FLUX) blocks, from the config: the IOSpec needs no weights
        self.n_joint_blocks = self.family.joint_block_count(transformer.config)
        self.hooked_blocks = resolve_blocks(self.n_joint_blocks, hook.hooked_blocks)
        self.modulation_blocks = (None if hook.modulation_blocks is None
                                  else frozenset(resolve_blocks(self.n_joint_blocks, hook.modulation_blocks)))
        self.lora_layout = (layout_for(family, transformer.config, hook.lora_rank, hook.lora_blocks,
                                       hook.lora_projections) if hook.lora_rank else None)
        self._processors = [JointAttnProcessor(i, self.family.image_first) for i in range(self.n_joint_blocks)]
        self._rope: nn.Module | None = None  # FLUX: fp32 RoPE used inside our calls

    @property
    def output_names(self) -> tuple[str, ...]:
        """What forward returns, in order: velocity, attn (with the score tap), group_attn (with the modulation inputs)."""
        return ("velocity", *(t.name for t in self._tap_specs()))

    def _run(self, span_mask: torch.Tensor | None, hook_inputs: dict, **model_inputs) -> tuple[torch.Tensor, ...]:
        """One call: the hook's inputs (``inputs.GROUPS``; each group all or none, and exactly the
        groups this backbone was built with) become the call's context; ``model_inputs`` go to the
        transformer. Returns ``output_names``' tensors."""
        known = [name for group in GROUPS for name in group.names]
        unknown = sorted(set(hook_inputs) - set(known))
        if unknown:
            raise TypeError(f"unexpected backbone inputs {unknown}; the hook takes {known}")
        given = {group.switch: _all_or_none(hook_inputs, group) for group in GROUPS}
        for group in GROUPS:
            if bool(given[group.switch]) != group.enabled(self.hook):
                raise ValueError(f"this backbone was built {'with' if group.enabled(self.hook) else 'without'} "
                                 f"{group.title}; give {'all of them' if group.enabled(self.hook) else 'none'}")
            for spec in group.specs(self._own_sizes()):
                fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)]
                value = given[group.switch].get(spec.name)
                if value is not None and any(value.shape[i] != d for i, d in fixed):
                    raise ValueError(f"{spec.name} has shape {tuple(value.shape)}; this model takes {spec.shape} "
                                     f"(it has {self.n_joint_blocks} joint blocks)")
        if (span_mask is not None) != self.hook.score_tap:
            raise ValueError("this backbone was built " + ("with the score tap: give span_mask" if self.hook.score_tap
                                                          else "without the score tap: give no span_mask"))
        swap, knobs, lora = given[KV_SWAP.switch], given[MODULATION.switch], given[LORA.switch]
        ctx = CallContext(SpanTap.for_call(span_mask, self.hook.max_span_tokens, self.hooked_blocks)
                          if span_mask is not None else None,
                          KvSwap(swap["kv_donor_index"], swap["kv_swap_gate"]) if swap else None,
                          Modulation(**knobs, path=self.hook.modulation_path, blocks=self.modulation_blocks)
                          if knobs else None,
                          GroupTap(knobs["text_groups"], frozenset(self.hooked_blocks)) if knobs else None,
                          LoraCall(lora["lora_down"], lora["lora_up"], self.lora_layout) if lora else None)
        with hooked(self.transformer, self.family, self._processors, self._rope):
            velocity = self.transformer(**model_inputs, **{self.family.attention_kwargs_name: {CONTEXT_KEY: ctx}},
                                        return_dict=False)[0]
        maps = [tap.finish() for tap in (ctx.taps, ctx.group_taps) if tap is not None]
        return (velocity, *maps)

    def _ranges(self) -> dict[str, tuple[float, float]]:
        """Input value ranges for the IOSpec: the timestep of sigma 0..1 under the family's rule."""
        return {"timestep": (0.0, self.family.timestep(1.0, self.family.reference_scheduler))}

    def _span_mask_spec(self, dt: str) -> tuple[TensorSpec, ...]:
        return (TensorSpec("span_mask", dt, ("batch", "text_len")),) if self.hook.score_tap else ()

    def _hook_input_specs(self) -> list[TensorSpec]:
        """The inputs of the groups this hook adds (``inputs.GROUPS``), at this model's block count."""
        return [spec for group in GROUPS if group.enabled(self.hook) for spec in group.specs(self._own_sizes())]

    def _own_sizes(self) -> dict[str, int]:
        """The sizes the input declarations name besides IOSpec dims: joint blocks, entity groups, LoRA slots."""
        lora = self.lora_layout.sizes() if self.lora_layout is not None else {}
        return {"blocks": self.n_joint_blocks, "groups": self.hook.max_groups, **lora}

    def _tap_specs(self) -> tuple[TensorSpec, ...]:
        """The score outputs: AMO's span map (with the score tap), and the entity groups' maps with the
        modulation inputs."""
        attn = (TensorSpec("attn", "float32", ("batch", "image_tokens")),) if self.hook.score_tap else ()
        if not self.hook.modulation:
            return attn
        return *attn, TensorSpec("group_attn", "float32", ("batch", self.hook.max_groups, "image_tokens"))

    @property
    def config(self):
        return self.transformer.config

    def io_spec(
        self, batch: int, height: int, width: int, text_len: int, dtype: torch.dtype = torch.float32
    ) -> IOSpec:
        """IOSpec for latents of ``height x width`` pixels (``vae_scale_factor``) and ``text_len`` text tokens."""
        raise NotImplementedError

    def _spatial_io_spec(self, batch: int, height: int, width: int, dtype: torch.dtype, conditioning,
                         text_dims: dict) -> IOSpec:
        """The IOSpec of a backbone on spatial latents [B, C, h, w] patched p x p (SD3, AuraFlow): latents,
        ``conditioning(dtype name)`` (the prompt inputs, in order), timestep, span mask and the hook's
        inputs; velocity and attn. ``text_dims``: the text dims the conditioning names."""
        cfg = self.config
        f, p = self.vae_scale_factor, cfg.patch_size
        if height % (f * p) or width % (f * p):
            raise ValueError(f"height and width must be multiples of {f * p} for this model, got {height}x{width}")
        lat_h, lat_w = height // f, width // f
        dt = dtype_name(dtype)
        return IOSpec(
            inputs=(
                TensorSpec("hidden_states", dt, ("batch", cfg.in_channels, "latent_h", "latent_w")),
                *conditioning(dt),
                TensorSpec("timestep", dt, ("batch",)),
                *self._span_mask_spec(dt),
                *self._hook_input_specs(),
            ),
            outputs=(
                TensorSpec("velocity", dt, ("batch", cfg.out_channels, "latent_h", "latent_w")),
                *self._tap_specs(),
            ),
            ranges=self._ranges(),
            dims={"batch": batch, "latent_h": lat_h, "latent_w": lat_w, **text_dims,
                  "image_tokens": (lat_h // p) * (lat_w // p)},
        )


class SD3Backbone(_Backbone):
    """SD3 MMDiT: latents [B, C, H, W], text [B, T, D], joint order [image ; text]."""


    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, C, h, w] latents
        encoder_hidden_states: torch.Tensor,  # [B, T, D_txt]
        pooled_projections: torch.Tensor,  # [B, P]
        timestep: torch.Tensor,  # [B] in the scheduler's 0..1000 scale
        span_mask: torch.Tensor | None = None,  # [B, T] 1 on quoted-text tokens (with the score tap)
        **hook_inputs: torch.Tensor,  # the groups of inputs.GROUPS that the HookConfig adds
    ) -> tuple[torch.Tensor, ...]:
        return self._run(
            span_mask,
            hook_inputs,
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
        )

    def io_spec(self, batch, height, width, text_len, dtype=torch.float32):
        cfg = self.config
        return self._spatial_io_spec(batch, height, width, dtype, lambda dt: (
            TensorSpec("encoder_hidden_states", dt, ("batch", "text_len", cfg.joint_attention_dim)),
            TensorSpec("pooled_projections", dt, ("batch", cfg.pooled_projection_dim)),
        ), {"text_len": text_len})


class FluxBackbone(_Backbone):
    """FLUX: packed latents [B, N, 64], text [B, T, D], joint order [text ; image], RoPE in fp32."""


    def __init__(self, transformer: nn.Module, family, hook: HookConfig = HookConfig(), vae_scale_factor: int = 8):
        super().__init__(transformer, family, hook, vae_scale_factor)
        pe = getattr(transformer, "pos_embed", None)  # none on a config-only stand-in (IOSpec only)
        self._rope = pe if pe is None or isinstance(pe, Fp32FluxPosEmbed) else Fp32FluxPosEmbed(pe.theta, pe.axes_dim)

    @property
    def has_guidance(self) -> bool:
        return bool(self.config.guidance_embeds)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, N_img, C_in] packed latents
        encoder_hidden_states: torch.Tensor,  # [B, T, D_txt]
        pooled_projections: torch.Tensor,  # [B, P]
        timestep: torch.Tensor,  # [B] sigma in [0, 1]
        img_ids: torch.Tensor,  # [N_img, 3]
        txt_ids: torch.Tensor,  # [T, 3]
        span_mask: torch.Tensor | None = None,  # [B, T] (with the score tap)
        guidance: torch.Tensor | None = None,  # [B] (guidance-distilled models only)
        **hook_inputs: torch.Tensor,  # the groups of inputs.GROUPS that the HookConfig adds
    ) -> tuple[torch.Tensor, ...]:
        return self._run(
            span_mask,
            hook_inputs,
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
        )

    def io_spec(self, batch, height, width, text_len, dtype=torch.float32):
        cfg = self.config
        f = 2 * self.vae_scale_factor  # latents packed 2x2 into tokens
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} for FLUX, got {height}x{width}")
        dt = dtype_name(dtype)
        n_img = (height // f) * (width // f)
        inputs = [
            TensorSpec("hidden_states", dt, ("batch", "image_tokens", cfg.in_channels)),
            TensorSpec("encoder_hidden_states", dt, ("batch", "text_len", cfg.joint_attention_dim)),
            TensorSpec("pooled_projections", dt, ("batch", cfg.pooled_projection_dim)),
            TensorSpec("timestep", dt, ("batch",)),
            TensorSpec("img_ids", "float32", ("image_tokens", 3)),
            TensorSpec("txt_ids", "float32", ("text_len", 3)),
            *self._span_mask_spec(dt),
        ]
        if self.has_guidance:
            inputs.append(TensorSpec("guidance", dt, ("batch",)))
        inputs += self._hook_input_specs()
        return IOSpec(
            inputs=tuple(inputs),
            outputs=(
                TensorSpec("velocity", dt, ("batch", "image_tokens", cfg.out_channels or cfg.in_channels)),
                *self._tap_specs(),
            ),
            ranges=self._ranges(),
            dims={"batch": batch, "image_tokens": n_img, "text_len": text_len},
        )


class AuraFlowBackbone(_Backbone):
    """AuraFlow: latents [B, 4, H, W], prompt embeddings [B, T, D]; inside the transformer the text is
    the 8 register tokens then the prompt, joint order [text ; image]: ``text_len`` (the span mask's
    and the modulation inputs' length) counts the registers, as the family's text layout does."""


    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, C, h, w] latents
        encoder_hidden_states: torch.Tensor,  # [B, T_prompt, D_txt]
        timestep: torch.Tensor,  # [B] sigma in [0, 1]
        span_mask: torch.Tensor | None = None,  # [B, registers + T_prompt]; register positions 0 (score tap)
        **hook_inputs: torch.Tensor,  # the groups of inputs.GROUPS that the HookConfig adds
    ) -> tuple[torch.Tensor, ...]:
        return self._run(span_mask, hook_inputs, hidden_states=hidden_states,
                         encoder_hidden_states=encoder_hidden_states, timestep=timestep)

    def io_spec(self, batch, height, width, text_len, dtype=torch.float32):
        registers = self.family.register_tokens
        if text_len <= registers:
            raise ValueError(f"text_len counts AuraFlow's {registers} register tokens too: give more than that")
        cfg = self.config
        return self._spatial_io_spec(batch, height, width, dtype, lambda dt: (
            TensorSpec("encoder_hidden_states", dt, ("batch", "prompt_len", cfg.joint_attention_dim)),
        ), {"text_len": text_len, "prompt_len": text_len - registers})


def _all_or_none(inputs: dict, group) -> dict:
    """``group``'s tensors from ``inputs`` (None counts as absent): all of them, or none (an empty dict)."""
    given = {n: inputs[n] for n in group.names if inputs.get(n) is not None}
    if given and len(given) != len(group.names):
        raise ValueError(f"{group.title} go together: give all of {', '.join(group.names)} or none")
    return given
