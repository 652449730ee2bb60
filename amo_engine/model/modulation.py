"""Paper B's attention modulation as logit knobs of one joint-attention call
(``../shared/spec/text_controls.md`` §B; the values and schedules are ours, the paper released none).

Per hooked joint block, on the logits ``q_i . k_j / sqrt(D)``:

* **quadrant scales** ``quadrant_scale [n_blocks, 4]`` multiply the logits of the image->image,
  image->text, text->image and text->text quadrants (identity 1; image->image > 1 sharpens the
  image's self-attention: the paper's early-phase temperature);
* **text-token bias** ``text_bias [B, T]`` is added to every logit towards text token t (log-weights;
  identity 0): reweighting prompt parts;
* **group mask**: ``text_groups [B, T, G]`` and ``image_groups [B, N_img, G]`` one-hots and a gate
  ``group_gate [n_blocks]``: a patch of group g loses ``GROUP_PENALTY`` on its logits towards text
  tokens of other groups (ungrouped patches and tokens are left alone; identity: gate 0).

Three implementations with one meaning (``bench/hook_cost.py --feature modulation`` times them):

* ``split`` (default): two fused ``scaled_dot_product_attention`` calls, one for the image query rows
  and one for the text query rows; within each the quadrant scales are per key column, so they
  scale K, and the bias and group penalty ride on 1 + G extra Q/K dims (zero-padded to 8, V too, so
  every SDPA operand has one width). Same QK work as the plain call plus the 8 extra dims.
* ``augmented``: one SDPA call on Q and K widened to 2D + 1 + G (each product picks up exactly one
  scaled term, one bias term and at most one penalty term, so nothing cancels) — twice the QK work.
* ``explicit``: the [B, H, L, L] logits for a plain softmax (the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GROUP_PENALTY = 1e4  # logit penalty from a patch to another group's tokens: exp(-1e4) is 0 in float32


@dataclass
class Modulation:
    """The knobs of one backbone call (see the module doc for shapes and identities)."""

    quadrant_scale: torch.Tensor  # [n_blocks, 4]
    text_bias: torch.Tensor  # [B, T]
    text_groups: torch.Tensor  # [B, T, G] 0/1
    image_groups: torch.Tensor  # [B, N_img, G] 0/1
    group_gate: torch.Tensor  # [n_blocks]
    path: str = "split"  # how the block computes it: split | augmented | explicit (see the module doc)
    blocks: frozenset[int] | None = None  # the joint blocks that modulate (None: all); the others run plain SDPA

    def penalty(self, block: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, T, G]: the logit change from a patch of group g to each text token (0 or -GROUP_PENALTY)."""
        grouped = (self.text_groups.sum(-1, keepdim=True) > 0).to(dtype)  # [B, T, 1]
        other = grouped * (1 - self.text_groups.to(dtype))  # [B, T, G]: 1 where token t is in a group but not g
        return -GROUP_PENALTY * self.group_gate[block].to(dtype) * other


def _joint(image, text, image_first: bool) -> torch.Tensor:
    return torch.cat([image, text] if image_first else [text, image], dim=2)


def _extra_dims(qkv, mod: Modulation, block: int) -> tuple[torch.Tensor, ...]:
    """The 1 + G dims appended to Q and K by both fused paths, as (image Q, text Q, image K, text K):
    image queries ``[1, u_p]``, text queries ``[1, 0]``, image keys ``[0, 0]``, text keys
    ``[sqrt(D) bias_t, sqrt(D) penalty_t]`` — under SDPA's 1/sqrt(D) each product gains the token
    bias and, for a grouped patch only, its one penalty term."""
    b, h, n_img, d = qkv.img_q.shape
    n_txt, g = qkv.txt_q.shape[2], mod.text_groups.shape[-1]
    dtype, device, root = qkv.img_q.dtype, qkv.img_q.device, d**0.5
    groups_i = mod.image_groups.to(dtype)[:, None].expand(b, h, n_img, g)  # [B, H, N, G]
    q_img = torch.cat([torch.ones(b, h, n_img, 1, dtype=dtype, device=device), groups_i], -1)  # [B, H, N, 1+G]
    q_txt = F.pad(torch.ones(b, h, n_txt, 1, dtype=dtype, device=device), (0, g))  # [B, H, T, 1+G]
    k_img = torch.zeros_like(q_img)
    bias = (root * mod.text_bias.to(dtype))[:, None, :, None].expand(b, h, n_txt, 1)  # [B, H, T, 1]
    penalty = (root * mod.penalty(block, dtype))[:, None].expand(b, h, n_txt, g)  # [B, H, T, G]
    return q_img, q_txt, k_img, torch.cat([bias, penalty], -1)


def _pad8(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Zero-pad the last dim to a multiple of 8 (one width for every SDPA operand)."""
    pad = -tensors[0].shape[-1] % 8
    return [F.pad(t, (0, pad)) if pad else t for t in tensors]


def augmented_qk(qkv, mod: Modulation, block: int, image_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Q and K widened so that ``sdpa(q, k, v, scale=D**-0.5)`` computes the modulated logits.

    Image queries ``[q, 0, extra]``, text queries ``[0, q, extra]``; image keys ``[s_ii k, s_ti k,
    extra]``, text keys ``[s_it k, s_tt k, extra]`` (``_extra_dims``); padded with zeros to a
    multiple of 8 dims. Returns [B, H, L, E] each, in the joint order.
    """
    s = mod.quadrant_scale[block].to(qkv.img_q.dtype)  # [4]: ii, it, ti, tt
    eq_img, eq_txt, ek_img, ek_txt = _extra_dims(qkv, mod, block)
    img_q = torch.cat([qkv.img_q, torch.zeros_like(qkv.img_q), eq_img], -1)
    txt_q = torch.cat([torch.zeros_like(qkv.txt_q), qkv.txt_q, eq_txt], -1)
    img_k = torch.cat([s[0] * qkv.img_k, s[2] * qkv.img_k, ek_img], -1)
    txt_k = torch.cat([s[1] * qkv.txt_k, s[3] * qkv.txt_k, ek_txt], -1)
    q, k = _pad8(_joint(img_q, txt_q, image_first), _joint(img_k, txt_k, image_first))  # [B, H, L, 2D+1+G+pad]
    return q, k


def explicit_logits(qkv, mod: Modulation, block: int, image_first: bool) -> torch.Tensor:
    """The modulated logits written out: [B, H, L, L] in the joint order."""
    d = qkv.img_q.shape[-1]
    s = mod.quadrant_scale[block].to(qkv.img_q.dtype)

    def dot(q, k):
        return q @ k.transpose(-1, -2) * d**-0.5

    txt_extra = mod.text_bias.to(qkv.img_q.dtype)[:, None, None, :]  # [B, 1, 1, T]
    penalty = mod.image_groups.to(qkv.img_q.dtype) @ mod.penalty(block, qkv.img_q.dtype).transpose(1, 2)  # [B, N, T]
    ii = s[0] * dot(qkv.img_q, qkv.img_k)
    it = s[1] * dot(qkv.img_q, qkv.txt_k) + txt_extra + penalty[:, None]
    ti = s[2] * dot(qkv.txt_q, qkv.img_k)
    tt = s[3] * dot(qkv.txt_q, qkv.txt_k) + txt_extra
    rows_img, rows_txt = _cat_keys(ii, it, image_first), _cat_keys(ti, tt, image_first)
    return torch.cat([rows_img, rows_txt] if image_first else [rows_txt, rows_img], dim=2)


def _cat_keys(to_image, to_text, image_first: bool) -> torch.Tensor:
    return torch.cat([to_image, to_text] if image_first else [to_text, to_image], dim=3)


PATHS = ("split", "augmented", "explicit")


def split_attention(qkv, mod: Modulation, block: int, image_first: bool) -> torch.Tensor:
    """The ``split`` path: [B, H, L, D] from two SDPA calls (image query rows, text query rows),
    each with K scaled by its query type's quadrant scales and the ``_extra_dims`` appended."""
    d = qkv.img_q.shape[-1]
    s = mod.quadrant_scale[block].to(qkv.img_q.dtype)  # [4]: ii, it, ti, tt
    eq_img, eq_txt, ek_img, ek_txt = _extra_dims(qkv, mod, block)
    (v,) = _pad8(F.pad(_joint(qkv.img_v, qkv.txt_v, image_first), (0, eq_img.shape[-1])))  # as wide as Q and K

    def keys(s_img, s_txt):  # [B, H, L, D+1+G]
        return _joint(torch.cat([s_img * qkv.img_k, ek_img], -1), torch.cat([s_txt * qkv.txt_k, ek_txt], -1),
                      image_first)

    outs = []
    for q, k in ((torch.cat([qkv.img_q, eq_img], -1), keys(s[0], s[1])),
                 (torch.cat([qkv.txt_q, eq_txt], -1), keys(s[2], s[3]))):
        q, k = _pad8(q, k)
        outs.append(F.scaled_dot_product_attention(q, k, v, scale=d**-0.5))
    return _joint(outs[0], outs[1], image_first)[..., :d]  # [B, H, L, D]


def modulated_attention(qkv, mod: Modulation, block: int, image_first: bool, path: str | None = None) -> torch.Tensor:
    """The block's attention output [B, H, L, D] under ``mod``, by ``path`` (default: ``mod.path``)."""
    path = path or mod.path
    if path == "split":
        return split_attention(qkv, mod, block, image_first)
    v = _joint(qkv.img_v, qkv.txt_v, image_first)
    if path == "augmented":
        q, k = augmented_qk(qkv, mod, block, image_first)
        return F.scaled_dot_product_attention(q, k, v, scale=qkv.img_q.shape[-1] ** -0.5)
    if path == "explicit":
        probs = torch.softmax(explicit_logits(qkv, mod, block, image_first), dim=-1)
        return probs @ v
    raise ValueError(f"unknown modulation path {path!r}; choose one of {', '.join(PATHS)}")
