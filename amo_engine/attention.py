"""The attention hook: joint-attention processors that keep the block's own fused attention and
add a cheap side branch with AMO's span scores.

For the S selected text-span query rows only, the side branch computes
``softmax(Q_span K_all^T / sqrt(d))`` ([B, H, S, L], S << L), keeps the image-key columns, sums
over span rows (weighted by the span mask) and averages over heads -> [B, N_img]. The block's
own softmax is never exposed, so runtimes can still fuse the main attention. No L x L tensor is
created by the side branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ScoreContext:
    """The per-call state of one backbone forward: which span rows to read, which blocks are
    active, and the maps they produce.

    A backbone makes a fresh context for each call and hands it to processors it installs for that
    call only (see ``backbone.hooked``), so nothing outlives the call on the user's model. Active
    blocks append one [B, N_img] map each; the others behave exactly like the stock processor.
    """

    span_index: torch.Tensor  # [B, S] int64 positions in the text sequence
    span_weight: torch.Tensor  # [B, S] float, 1 for span tokens, 0 for padding
    active: frozenset[int] = frozenset()
    maps: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def for_call(cls, span_mask: torch.Tensor, max_span_tokens: int, active: tuple[int, ...]) -> "ScoreContext":
        """The first ``max_span_tokens`` span tokens by position, from a [B, T] 0/1 mask.

        TopK of ``mask * (T - position)``: span tokens score T - t (all distinct, earliest highest),
        the others 0, so the selection is the first S span tokens in order (fixed size S; slots past
        a row's span have weight 0).
        """
        t = span_mask.shape[1]
        k = min(max_span_tokens, t)
        position = torch.arange(t, 0, -1, device=span_mask.device, dtype=torch.float32)  # [T]: T .. 1
        score = (span_mask.float() > 0).float() * position  # [B, T]
        _, index = score.topk(k, dim=1)  # [B, S]
        weight = torch.gather(span_mask.float(), 1, index)  # [B, S]
        return cls(index, weight, frozenset(active))

    def record(self, block: int, compute) -> None:
        """Append ``compute()`` (a [B, N_img] map) when ``block`` is active in this call."""
        if block in self.active:
            self.maps.append(compute())

    def finish(self) -> torch.Tensor:
        if not self.maps:
            raise RuntimeError("no hooked attention block ran; check the hooked block indices")
        return torch.stack(self.maps, 0).mean(0)  # [B, N_img]


def span_image_scores(
    query_text: torch.Tensor,
    key: torch.Tensor,
    span_index: torch.Tensor,
    span_weight: torch.Tensor,
    image_start: int,
    n_image: int,
) -> torch.Tensor:
    """Attention mass that span query rows put on image keys, averaged over heads.

    query_text [B, H, T, D] (text queries), key [B, H, L, D] (all keys, after norm and RoPE),
    span_index / span_weight [B, S]. Returns [B, N_img] in float32.
    """
    b, h, _, d = query_text.shape
    idx = span_index[:, None, :, None].expand(b, h, span_index.shape[1], d)  # [B, H, S, D]
    q_span = torch.gather(query_text, 2, idx) * (d**-0.5)  # [B, H, S, D], scale folded into the S rows
    logits = torch.matmul(q_span, key.transpose(-1, -2))  # [B, H, S, L] in the model dtype
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # [B, H, S, L], fp32 softmax
    image_probs = probs[..., image_start : image_start + n_image]  # [B, H, S, N_img]
    weight = span_weight.to(torch.float32)[:, None, None, :]  # [B, 1, 1, S]
    mass = torch.matmul(weight, image_probs).squeeze(2)  # [B, H, N_img]: weighted sum over span rows
    return mass.mean(dim=1)  # [B, N_img]


class SD3ScoreAttnProcessor:
    """SD3 joint attention (as diffusers' JointAttnProcessor2_0) plus the span-score side branch.

    Joint sequence order is [image ; text].
    """

    def __init__(self, ctx: ScoreContext, block: int):
        self.ctx = ctx
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("SD3ScoreAttnProcessor hooks joint blocks only (encoder_hidden_states is None)")
        b, n_img = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads

        def heads_first(t):  # [B, L, H*D] -> [B, H, L, D]
            return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        query = heads_first(attn.to_q(hidden_states))
        key = heads_first(attn.to_k(hidden_states))
        value = heads_first(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        txt_q = heads_first(attn.add_q_proj(encoder_hidden_states))
        txt_k = heads_first(attn.add_k_proj(encoder_hidden_states))
        txt_v = heads_first(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            txt_q = attn.norm_added_q(txt_q)
        if attn.norm_added_k is not None:
            txt_k = attn.norm_added_k(txt_k)

        query = torch.cat([query, txt_q], dim=2)  # [B, H, L, D]
        key = torch.cat([key, txt_k], dim=2)
        value = torch.cat([value, txt_v], dim=2)

        ctx = self.ctx
        ctx.record(self.block, lambda: span_image_scores(txt_q, key, ctx.span_index, ctx.span_weight, 0, n_img))

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)  # [B, H, L, D]
        out = out.transpose(1, 2).reshape(b, -1, heads * out.shape[-1]).to(query.dtype)  # [B, L, C]
        img_out, txt_out = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            txt_out = attn.to_add_out(txt_out)
        img_out = attn.to_out[1](attn.to_out[0](img_out))
        return img_out, txt_out


class FluxScoreAttnProcessor:
    """FLUX double-stream attention (as diffusers' FluxAttnProcessor) plus the span-score side branch.

    Joint sequence order is [text ; image].
    """

    def __init__(self, ctx: ScoreContext, block: int):
        self.ctx = ctx
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        if encoder_hidden_states is None:
            raise ValueError("FluxScoreAttnProcessor hooks double-stream blocks only (encoder_hidden_states is None)")
        n_txt = encoder_hidden_states.shape[1]
        n_img = hidden_states.shape[1]

        def split_heads(t):  # [B, L, H*D] -> [B, L, H, D]
            return t.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(split_heads(attn.to_q(hidden_states)))
        key = attn.norm_k(split_heads(attn.to_k(hidden_states)))
        value = split_heads(attn.to_v(hidden_states))
        txt_q = attn.norm_added_q(split_heads(attn.add_q_proj(encoder_hidden_states)))
        txt_k = attn.norm_added_k(split_heads(attn.add_k_proj(encoder_hidden_states)))
        txt_v = split_heads(attn.add_v_proj(encoder_hidden_states))

        query = torch.cat([txt_q, query], dim=1)  # [B, L, H, D]
        key = torch.cat([txt_k, key], dim=1)
        value = torch.cat([txt_v, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        ctx = self.ctx
        ctx.record(
            self.block,
            lambda: span_image_scores(
                query[:, :n_txt].transpose(1, 2), key.transpose(1, 2), ctx.span_index, ctx.span_weight, n_txt, n_img
            ),
        )

        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask)  # [B, L, H, D]
        out = out.flatten(2, 3).to(query.dtype)  # [B, L, C]
        txt_out, img_out = out[:, :n_txt], out[:, n_txt:]
        img_out = attn.to_out[1](attn.to_out[0](img_out.contiguous()))
        txt_out = attn.to_add_out(txt_out.contiguous())
        return img_out, txt_out
