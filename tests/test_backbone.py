"""Backbone + attention hook: velocity equals stock diffusers; scores equal an explicit reference."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from amo_engine.model.attention import joint, project
from amo_engine.model.backbone import HookConfig, resolve_blocks
from amo_engine.model.families import make_backbone

from conftest import TEXT_LEN, random_feeds, tiny_transformer

STOCK_ARGS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")


def stock_velocity(stock, feeds):
    kwargs = {k: v for k, v in feeds.items() if k in STOCK_ARGS}
    with torch.no_grad():
        return stock(**kwargs, return_dict=False)[0]


def test_velocity_equals_stock_transformer(backbone_and_stock):
    backbone, stock = backbone_and_stock
    feeds = random_feeds(backbone)
    with torch.no_grad():
        velocity, attn = backbone(**feeds)
    expected = stock_velocity(stock, feeds)
    err = (velocity - expected).abs().max().item()
    print(f"{backbone.family}: velocity max abs err vs stock = {err:.3e}")
    assert velocity.shape == expected.shape
    assert err <= 1e-5
    assert attn.shape == (2, backbone.io_spec(2, 128, 128, TEXT_LEN[backbone.family.name]).dims["image_tokens"])


def explicit_reference_scores(backbone, stock, feeds) -> torch.Tensor:
    """Full L x L softmax per hooked block from the block's own inputs, span rows by boolean mask."""
    captured = []
    joint_attns, _ = backbone.family.attentions(stock)
    blocks = [joint_attns[i] for i in backbone.hooked_blocks]
    hooks = [
        a.register_forward_pre_hook(lambda mod, args, kwargs: captured.append((mod, kwargs)), with_kwargs=True)
        for a in blocks
    ]
    try:
        stock_velocity(stock, feeds)
    finally:
        for h in hooks:
            h.remove()
    mask = feeds["span_mask"].bool()  # [B, T]
    first_img = backbone.family.image_first
    maps = []
    for attn, kw in captured:  # the hook's own projection step, then an explicit full softmax
        qkv = project(attn, kw["hidden_states"], kw["encoder_hidden_states"], kw.get("image_rotary_emb"), first_img)
        q, k = joint(qkv.img_q, qkv.txt_q, first_img), joint(qkv.img_k, qkv.txt_k, first_img)  # [B, H, L, D]
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # [B, H, L, L]
        n_img, n_txt = qkv.img_q.shape[2], qkv.txt_q.shape[2]
        txt_rows, img_cols = (slice(n_img, None), slice(0, n_img)) if first_img else (slice(0, n_txt), slice(n_txt, None))
        text_probs = probs[:, :, txt_rows, img_cols]  # [B, H, T, N_img]
        rows = [text_probs[i][:, mask[i]].sum(1).mean(0) for i in range(q.shape[0])]  # each [N_img]
        maps.append(torch.stack(rows))
    return torch.stack(maps).mean(0)


def test_scores_equal_explicit_full_softmax_reference(backbone_and_stock):
    backbone, stock = backbone_and_stock
    feeds = random_feeds(backbone, seed=3)
    with torch.no_grad():
        _, attn = backbone(**feeds)
        expected = explicit_reference_scores(backbone, stock, feeds)
    err = (attn - expected).abs().max().item()
    print(f"{backbone.family}: attn max abs err vs explicit softmax = {err:.3e}")
    assert err <= 1e-6
    assert attn.abs().max() > 1e-3  # a real signal, not zeros


def test_hooked_block_subset_and_rows_independent(family):
    model = tiny_transformer(family)
    backbone = make_backbone(model, HookConfig(hooked_blocks=(1,)))
    assert backbone.hooked_blocks == (1,)
    feeds = random_feeds(backbone, seed=4)
    with torch.no_grad():
        _, attn = backbone(**feeds)
        # change row 1's span only: row 0's map must not move
        feeds["span_mask"][1] = 0.0
        feeds["span_mask"][1, 3] = 1.0
        _, attn2 = backbone(**feeds)
    assert torch.equal(attn[0], attn2[0])
    assert not torch.allclose(attn[1], attn2[1])


def test_empty_span_gives_zero_map(family):
    backbone = make_backbone(tiny_transformer(family))
    feeds = random_feeds(backbone)
    feeds["span_mask"].zero_()
    with torch.no_grad():
        _, attn = backbone(**feeds)
    assert torch.count_nonzero(attn) == 0


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_side_branch_never_materialises_l_by_l(family):
    backbone = make_backbone(tiny_transformer(family))
    feeds = random_feeds(backbone)
    n_img = backbone.io_spec(2, 128, 128, TEXT_LEN[family]).dims["image_tokens"]
    seq = n_img + TEXT_LEN[family]
    rec = _ShapeRecorder()
    with torch.no_grad(), rec:
        backbone(**feeds)
    square = [s for s in rec.shapes if len(s) >= 2 and s[-1] == seq and s[-2] == seq]
    assert rec.shapes, "the recorder saw no ops"
    assert any(len(s) == 4 and s[-1] == seq and s[-2] == min(64, TEXT_LEN[family]) for s in rec.shapes)
    assert square == []


def test_hooked_block_errors():
    with pytest.raises(ValueError, match="out of range"):
        resolve_blocks(4, [0, 7])
    with pytest.raises(ValueError, match="unsupported transformer class"):
        make_backbone(torch.nn.Linear(2, 2))
    backbone = make_backbone(tiny_transformer("sd3"))
    with pytest.raises(ValueError, match="multiples of 16"):
        backbone.io_spec(1, 120, 128, 93)
