"""The attention hook, as stages: project -> edits -> the block's own fused attention -> taps.

One processor serves SD3's joint blocks and FLUX's double-stream blocks; the families differ only
in the joint order ([image ; text] for SD3, [text ; image] for FLUX) and FLUX's RoPE.

* **project**: image and text Q/K/V after their norms (and RoPE), heads first [B, H, L, D]; with
  LoRA factors (``lora.py``) each adapted projection, here and at the output, adds its row's
  low-rank path beside the fused one.
* **edits**: change what the block attends with. ``swap_text_kv`` (Paper A): a row's text keys and
  values move towards its donor row's, ``K_txt <- K_txt + gate * (K_txt[donor] - K_txt)`` (same
  for V); image Q/K/V and text queries stay the row's own. Identity when the gate is 0.
* **attention**: the block's own ``scaled_dot_product_attention``; its softmax is never exposed,
  so runtimes can still fuse it. With Paper B's knobs (``modulation.py``) it is still one SDPA
  call, on widened Q and K that carry the logit scales, token bias and group mask. The taps read
  the unmodulated logits.
* **taps**: read the block without changing it. ``span_image_scores`` (AMO): for the S selected
  span query rows only, ``softmax(Q_span K_all^T / sqrt(d))`` ([B, H, S, L], S << L), image-key
  columns, summed over span rows and averaged over heads -> [B, N_img]. No L x L tensor.
  ``group_image_scores`` (Paper B's entity groups, with modulation inputs): the same mass for the
  text query rows of each group -> [B, G, N_img] ([B, H, T, L], T << L), beside the span map, so
  placing the groups never touches what AMO reads.

All per-call inputs travel in a ``CallContext`` passed as ``joint_attention_kwargs={"amo": ctx}``;
processors hold only their block index and the family's order, and a processor given no context
computes exactly what the stock diffusers processor does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from amo_engine.model.lora import LoraCall
from amo_engine.model.modulation import Modulation, modulated_attention

CONTEXT_KEY = "amo"  # the joint_attention_kwargs key our processors read their CallContext from


# ---------------------------------------------------------------- per-call context


@dataclass
class SpanTap:
    """AMO's span scores for one call: which span rows to read, which blocks are active, and the
    maps they produce (one [B, N_img] map per active block)."""

    span_index: torch.Tensor  # [B, S] int64 positions in the text sequence
    span_weight: torch.Tensor  # [B, S] float, 1 for span tokens, 0 for padding
    active: frozenset[int] = frozenset()
    maps: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def for_call(cls, span_mask: torch.Tensor, max_span_tokens: int, active: tuple[int, ...]) -> "SpanTap":
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

    def finish(self) -> torch.Tensor:
        if not self.maps:
            raise RuntimeError("no hooked attention block ran; check the hooked block indices")
        return torch.stack(self.maps, 0).mean(0)  # [B, N_img]


@dataclass
class GroupTap:
    """Entity-group maps for one call: each group's text tokens as query rows, one [B, G, N_img]
    map per active block."""

    text_groups: torch.Tensor  # [B, T, G] 0/1
    active: frozenset[int] = frozenset()
    maps: list[torch.Tensor] = field(default_factory=list)

    def finish(self) -> torch.Tensor:
        if not self.maps:
            raise RuntimeError("no hooked attention block ran; check the hooked block indices")
        return torch.stack(self.maps, 0).mean(0)  # [B, G, N_img]


@dataclass
class KvSwap:
    """Paper A's text K/V swap for one call: each row's donor row and a gate per joint block."""

    donor_index: torch.Tensor  # [B] int64: the row whose text K/V this row takes (identity: arange(B))
    gate: torch.Tensor  # [n_blocks] float: 0 off, 1 swap (values between interpolate)


@dataclass
class CallContext:
    """Everything one backbone call asks of the hooked blocks; None parts are off."""

    taps: SpanTap | None = None
    kv_swap: KvSwap | None = None
    modulation: Modulation | None = None  # Paper B's logit knobs (modulation.py)
    group_taps: GroupTap | None = None  # with modulation: the entity groups' maps
    lora: LoraCall | None = None  # LoRA factors per row beside the adapted projections (lora.py)


# ---------------------------------------------------------------- stages


@dataclass
class JointQKV:
    """Q/K/V of one joint-attention call, heads first [B, H, L, D], after norms and RoPE."""

    img_q: torch.Tensor
    img_k: torch.Tensor
    img_v: torch.Tensor
    txt_q: torch.Tensor
    txt_k: torch.Tensor
    txt_v: torch.Tensor


def linear(attn, name: str, x: torch.Tensor, block: int, lora: LoraCall | None) -> torch.Tensor:
    """The block's projection ``name`` (a diffusers module path such as "to_out.0") of x, with its
    LoRA path when the call carries factors for it."""
    layer = attn.get_submodule(name)
    return layer(x) if lora is None else lora.project(layer, block, name, x)


def project(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, image_rotary_emb=None,
            image_first: bool = True, block: int = 0, lora: LoraCall | None = None) -> JointQKV:
    """The block's image and text projections (with their LoRA paths), their norms, and (FLUX) RoPE,
    whose positions are in the joint order: cos/sin rows for the text part first when ``image_first``
    is False."""

    def heads(name, x, norm):  # [B, L, H*D] -> [B, L, H, D], normed per head
        y = linear(attn, name, x, block, lora).unflatten(-1, (attn.heads, -1))
        return norm(y) if norm is not None else y

    img_q, img_k = heads("to_q", hidden_states, attn.norm_q), heads("to_k", hidden_states, attn.norm_k)
    img_v = heads("to_v", hidden_states, None)
    txt_q = heads("add_q_proj", encoder_hidden_states, attn.norm_added_q)
    txt_k = heads("add_k_proj", encoder_hidden_states, attn.norm_added_k)
    txt_v = heads("add_v_proj", encoder_hidden_states, None)
    if image_rotary_emb is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        n_first = (hidden_states if image_first else encoder_hidden_states).shape[1]
        cos, sin = image_rotary_emb  # [L, D] each, joint order
        first, second = (cos[:n_first], sin[:n_first]), (cos[n_first:], sin[n_first:])
        img_rope, txt_rope = (first, second) if image_first else (second, first)
        img_q, img_k = (apply_rotary_emb(t, img_rope, sequence_dim=1) for t in (img_q, img_k))
        txt_q, txt_k = (apply_rotary_emb(t, txt_rope, sequence_dim=1) for t in (txt_q, txt_k))
    return JointQKV(*(t.transpose(1, 2) for t in (img_q, img_k, img_v, txt_q, txt_k, txt_v)))


def swap_text_kv(qkv: JointQKV, swap: KvSwap, block: int) -> JointQKV:
    """Edit: text K and V move towards the donor row's by this block's gate (0: unchanged)."""
    gate = swap.gate[block].to(qkv.txt_k.dtype)  # [] this block's gate

    def towards_donor(t):  # [B, H, T, D]
        return t + gate * (t.index_select(0, swap.donor_index) - t)

    return JointQKV(qkv.img_q, qkv.img_k, qkv.img_v, qkv.txt_q, towards_donor(qkv.txt_k), towards_donor(qkv.txt_v))


def joint(image: torch.Tensor, text: torch.Tensor, image_first: bool) -> torch.Tensor:
    """[B, H, N_img, D] and [B, H, T, D] in the family's joint order along the sequence."""
    return torch.cat([image, text] if image_first else [text, image], dim=2)


def span_image_scores(
    query_text: torch.Tensor,
    key: torch.Tensor,
    span_index: torch.Tensor,
    span_weight: torch.Tensor,
    image_start: int,
    n_image: int,
) -> torch.Tensor:
    """Tap: attention mass that span query rows put on image keys, averaged over heads.

    query_text [B, H, T, D] (text queries), key [B, H, L, D] (all keys, after norm and RoPE),
    span_index / span_weight [B, S]. Returns [B, N_img] in float32.
    """
    b, h, _, d = query_text.shape
    idx = span_index[:, None, :, None].expand(b, h, span_index.shape[1], d)  # [B, H, S, D]
    q_span = torch.gather(query_text, 2, idx)  # [B, H, S, D]
    return image_mass(q_span, key, span_weight[:, None, :], image_start, n_image)[:, 0]  # [B, N_img]


def group_image_scores(query_text: torch.Tensor, key: torch.Tensor, text_groups: torch.Tensor, image_start: int,
                       n_image: int) -> torch.Tensor:
    """Tap: for each entity group, the attention mass its text query rows put on image keys,
    averaged over heads. text_groups [B, T, G] 0/1 -> [B, G, N_img] in float32."""
    return image_mass(query_text, key, text_groups.transpose(1, 2), image_start, n_image)


def image_mass(query_rows: torch.Tensor, key: torch.Tensor, row_weight: torch.Tensor, image_start: int,
               n_image: int) -> torch.Tensor:
    """query_rows [B, H, R, D] against key [B, H, L, D]: softmax over keys, image-key columns,
    weighted sums over the rows by row_weight [B, M, R], mean over heads -> [B, M, N_img] float32."""
    d = query_rows.shape[-1]
    logits = torch.matmul(query_rows * (d**-0.5), key.transpose(-1, -2))  # [B, H, R, L], scale on the R rows
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # [B, H, R, L], fp32 softmax
    image_probs = probs[..., image_start : image_start + n_image]  # [B, H, R, N_img]
    weight = row_weight.to(torch.float32)[:, None]  # [B, 1, M, R]
    mass = torch.matmul(weight, image_probs)  # [B, H, M, N_img]: weighted sums over the rows
    return mass.mean(dim=1)  # [B, M, N_img]


# ---------------------------------------------------------------- processors


class JointAttnProcessor:
    """A joint-attention block (SD3 joint / FLUX double-stream) as the four stages; with no
    context it is the stock processor (diffusers' JointAttnProcessor2_0 / FluxAttnProcessor)."""

    def __init__(self, block: int, image_first: bool):
        self.block = block
        self.image_first = image_first

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 amo: CallContext | None = None):
        if encoder_hidden_states is None:
            raise ValueError("JointAttnProcessor hooks joint blocks only (encoder_hidden_states is None)")
        b, n_img, n_txt = hidden_states.shape[0], hidden_states.shape[1], encoder_hidden_states.shape[1]
        lora = amo.lora if amo is not None else None
        qkv = self.edit(project(attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.image_first,
                                self.block, lora), amo)
        key = joint(qkv.img_k, qkv.txt_k, self.image_first)  # [B, H, L, D]
        modulation = amo.modulation if amo is not None else None
        if modulation is not None and (modulation.blocks is None or self.block in modulation.blocks):
            out = modulated_attention(qkv, amo.modulation, self.block, self.image_first)  # [B, H, L, D]
        else:
            out = F.scaled_dot_product_attention(joint(qkv.img_q, qkv.txt_q, self.image_first), key,
                                                 joint(qkv.img_v, qkv.txt_v, self.image_first),
                                                 attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        taps = amo.taps if amo is not None else None
        image_start = 0 if self.image_first else n_txt
        if taps is not None and self.block in taps.active:
            taps.maps.append(span_image_scores(qkv.txt_q, key, taps.span_index, taps.span_weight, image_start, n_img))
        groups = amo.group_taps if amo is not None else None
        if groups is not None and self.block in groups.active:
            groups.maps.append(group_image_scores(qkv.txt_q, key, groups.text_groups, image_start, n_img))
        out = out.transpose(1, 2).reshape(b, n_img + n_txt, -1).to(qkv.img_q.dtype)  # [B, L, C]
        img_out, txt_out = (out[:, :n_img], out[:, n_img:]) if self.image_first else (out[:, n_txt:], out[:, :n_txt])
        img_out = attn.to_out[1](linear(attn, "to_out.0", img_out.contiguous(), self.block, lora))
        if not getattr(attn, "context_pre_only", False):  # the last SD3 block keeps no text stream
            txt_out = linear(attn, "to_add_out", txt_out.contiguous(), self.block, lora)
        return img_out, txt_out

    def edit(self, qkv: JointQKV, amo: CallContext | None) -> JointQKV:
        """The edits stage, in order (the K/V swap now); identity without a context."""
        if amo is not None and amo.kv_swap is not None:
            qkv = swap_text_kv(qkv, amo.kv_swap, self.block)
        return qkv


class ContextFreeProcessor:
    """Wraps a block's own processor for blocks we do not hook (FLUX single-stream blocks), which
    diffusers hands the same ``joint_attention_kwargs``: takes our context and drops it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 amo: CallContext | None = None):
        return self.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, image_rotary_emb=image_rotary_emb)
