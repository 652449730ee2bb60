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
QUADRANTS = ("image->image", "image->text", "text->image", "text->text")


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


def augmented_qk(qkv, mod: Modulation, block: int, image_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Q and K widened so that ``sdpa(q, k, v, scale=D**-0.5)`` computes the modulated logits.

    Image queries ``[q, 0, 1, u_p]``, text queries ``[0, q, 1, 0]``; image keys
    ``[s_ii k, s_ti k, 0, 0]``, text keys ``[s_it k, s_tt k, sqrt(D) bias_t, sqrt(D) penalty_t]``;
    padded with zeros to a multiple of 8 dims. Returns [B, H, L, E] each, in the joint order.
    """
    b, h, n_img, d = qkv.img_q.shape
    n_txt, g = qkv.txt_q.shape[2], mod.text_groups.shape[-1]
    dtype, root = qkv.img_q.dtype, d**0.5
    s = mod.quadrant_scale[block].to(dtype)  # [4]
    zeros_i, zeros_t = torch.zeros_like(qkv.img_q), torch.zeros_like(qkv.txt_q)
    one_i = torch.ones(b, h, n_img, 1, dtype=dtype, device=qkv.img_q.device)
    one_t = torch.ones(b, h, n_txt, 1, dtype=dtype, device=qkv.img_q.device)
    groups_i = mod.image_groups.to(dtype)[:, None].expand(b, h, n_img, g)  # [B, H, N, G]
    img_q = torch.cat([qkv.img_q, zeros_i, one_i, groups_i], -1)
    txt_q = torch.cat([zeros_t, qkv.txt_q, one_t, torch.zeros(b, h, n_txt, g, dtype=dtype, device=one_t.device)], -1)
    bias = (root * mod.text_bias.to(dtype))[:, None, :, None].expand(b, h, n_txt, 1)  # [B, H, T, 1]
    penalty = (root * mod.penalty(block, dtype))[:, None].expand(b, h, n_txt, g)  # [B, H, T, G]
    img_k = torch.cat([s[0] * qkv.img_k, s[2] * qkv.img_k, 0 * one_i, 0 * groups_i], -1)
    txt_k = torch.cat([s[1] * qkv.txt_k, s[3] * qkv.txt_k, bias, penalty], -1)
    q, k = _joint(img_q, txt_q, image_first), _joint(img_k, txt_k, image_first)  # [B, H, L, 2D+1+G]
    pad = -q.shape[-1] % 8
    if pad:
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
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
    """The ``split`` path: [B, H, L, D] from two SDPA calls (image query rows, text query rows)."""
    b, h, n_img, d = qkv.img_q.shape
    n_txt, g = qkv.txt_q.shape[2], mod.text_groups.shape[-1]
    dtype, root = qkv.img_q.dtype, d**0.5
    s = mod.quadrant_scale[block].to(dtype)  # [4]: ii, it, ti, tt
    width = d + 1 + g
    pad = -width % 8

    def widen(t, extra):  # [B, H, n, D] + [B, H, n, 1+G] -> [B, H, n, D+1+G+pad]
        return F.pad(torch.cat([t, extra], -1), (0, pad))

    ones_i = torch.ones(b, h, n_img, 1, dtype=dtype, device=qkv.img_q.device)
    groups_i = mod.image_groups.to(dtype)[:, None].expand(b, h, n_img, g)  # [B, H, N, G]
    zeros_i = torch.zeros(b, h, n_img, 1 + g, dtype=dtype, device=qkv.img_q.device)
    bias = (root * mod.text_bias.to(dtype))[:, None, :, None].expand(b, h, n_txt, 1)  # [B, H, T, 1]
    penalty = (root * mod.penalty(block, dtype))[:, None].expand(b, h, n_txt, g)  # [B, H, T, G]
    img_q = widen(qkv.img_q, torch.cat([ones_i, groups_i], -1))
    txt_q = widen(qkv.txt_q, torch.cat([ones_i[:, :, :1].expand(b, h, n_txt, 1),
                                        torch.zeros(b, h, n_txt, g, dtype=dtype, device=ones_i.device)], -1))
    v = F.pad(_joint(qkv.img_v, qkv.txt_v, image_first), (0, width + pad - d))
    txt_k_extra_img = torch.cat([bias, penalty], -1)  # what image queries read from text keys
    txt_k_extra_txt = torch.cat([bias, torch.zeros_like(penalty)], -1)  # text queries: bias only

    def keys(s_img, s_txt, txt_extra):
        return _joint(widen(s_img * qkv.img_k, zeros_i), widen(s_txt * qkv.txt_k, txt_extra), image_first)

    scale = d**-0.5
    out_img = F.scaled_dot_product_attention(img_q, keys(s[0], s[1], txt_k_extra_img), v, scale=scale)
    out_txt = F.scaled_dot_product_attention(txt_q, keys(s[2], s[3], txt_k_extra_txt), v, scale=scale)
    return _joint(out_img, out_txt, image_first)[..., :d]  # [B, H, L, D]


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
