"""Quoted-span parsing and char->token span masks for CLIP and T5 layouts."""

from __future__ import annotations

import pytest
import torch

from amo_engine.model.presets import build_clip_tokenizer, build_t5_tokenizer, prompts
from amo_engine.prompts import auraflow_layout, find_quoted_spans, flux_layout, sd3_layout, token_mask

PROMPTS = prompts()


@pytest.fixture(scope="module")
def clip_tok():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def t5_tok():
    return build_t5_tokenizer()


def test_all_100_prompts_give_their_whole_span():
    assert len(PROMPTS) == 100
    with_apostrophe = 0
    for p in PROMPTS:
        expected = p[p.index("'") + 1 : p.rindex("'")]
        spans = find_quoted_spans(p)
        assert [s.text(p) for s in spans] == [expected], p
        with_apostrophe += "'" in expected
    assert with_apostrophe == 6


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ('A sign "Open Late" on a door', ["Open Late"]),
        ("A card \u2018Happy Birthday\u2019 and a \u201cThank You\u201d note", ["Happy Birthday", "Thank You"]),
        ("A mug \u2018It\u2019s Monday\u2019", ["It\u2019s Monday"]),
        ("Two signs 'STOP' and 'GO' and \"YIELD\"", ["STOP", "GO", "YIELD"]),
        ("It's a cat's toy with no text", []),
        ("An unbalanced 'quote here", []),
        ("Empty quotes '' and ' ' here", []),
        ("'Start' of the prompt", ["Start"]),
        ("The dogs' bowl reads 'WOOF'", ["WOOF"]),
    ],
)
def test_quote_kinds_and_apostrophes(prompt, expected):
    assert [s.text(prompt) for s in find_quoted_spans(prompt)] == expected


@pytest.mark.parametrize(
    "prompt,expected",
    [
        # elisions at the start, middle and end of quoted text
        ("A banner ''Twas the Night' over the door", ["'Twas the Night"]),
        ("A sign 'Rock 'n' Roll' in neon", ["Rock 'n' Roll"]),
        ("A menu 'Fish 'n' Chips' and a sign 'Tea'", ["Fish 'n' Chips", "Tea"]),
        ("A pub sign 'Top o' the Morning' in gold", ["Top o' the Morning"]),
        ("A record 'The Smiths' Greatest Hits' cover", ["The Smiths' Greatest Hits"]),
        ("A shirt 'Rockin' Robin' print", ["Rockin' Robin"]),
        ("A shirt printed 'Keep Rollin'' in red", ["Keep Rollin'"]),
        ("A mug \u2018Rock \u2019n\u2019 Roll\u2019", ["Rock \u2019n\u2019 Roll"]),
        # possessives outside quotes, before and after a span
        ("The dogs' bowl reads 'WOOF'", ["WOOF"]),
        ("'WOOF' is painted on the dogs' bowl", ["WOOF"]),
        ("the kids' toys and the dogs' bowls", []),
        # unterminated quotes still give no span
        ("A sign 'Rock 'n roll", []),
    ],
)
def test_elisions_inside_quotes_do_not_close_the_span(prompt, expected):
    assert [s.text(prompt) for s in find_quoted_spans(prompt)] == expected


def _covered_text(tokenizer, prompt, mask, max_length):
    enc = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_offsets_mapping=True)
    chars = set()
    for t in torch.nonzero(mask).flatten().tolist():
        a, b = enc["offset_mapping"][t]
        chars.update(range(a, b))
    return chars


@pytest.mark.parametrize("which", ["clip", "t5"])
def test_token_masks_cover_exactly_the_span(which, clip_tok, t5_tok):
    """Every span character is covered; marked tokens touch nothing outside the span's words."""
    tok, n = (clip_tok, 77) if which == "clip" else (t5_tok, 64)
    for p in PROMPTS:
        spans = find_quoted_spans(p)
        mask = token_mask(tok, p, spans, n)
        covered = _covered_text(tok, p, mask, n)
        span = spans[0]
        want = {i for i in range(span.start, span.end) if not p[i].isspace()}
        assert want <= covered, p
        assert min(covered) >= span.start - 1 and max(covered) <= span.end, p


def test_sd3_layout_marks_clip_and_t5_parts(clip_tok, t5_tok):
    layout = sd3_layout(clip_tok, t5_tok, 77, 64)
    masks = layout.span_mask([PROMPTS[0], "no quotes at all"])
    assert masks.shape == (2, 77 + 64)
    clip_part, t5_part = masks[0, :77], masks[0, 77:]
    # 'Adventure Awaits, Pack Your Bags' -> CLIP: adventure awaits , pack your bags (6 tokens)
    assert clip_part.sum() == 6
    assert t5_part.sum() >= 5
    assert masks[1].sum() == 0  # no span: empty mask, the caller falls back to overshoot


def test_flux_layout_and_batch(t5_tok):
    layout = flux_layout(t5_tok, 48)
    masks = layout.span_mask(["a 'Hello' b", "a 'Good Night Moon' b"])
    assert masks.shape == (2, 48)
    assert 0 < masks[0].sum() < masks[1].sum()


def test_auraflow_layout_leaves_the_register_tokens_unmarked(t5_tok):
    layout = auraflow_layout(t5_tok, 8, 48)
    prompt = "a 'Hello' b " + "word " * 60 + "'Cut Off'"
    masks = layout.span_mask(["a 'Hello' b", prompt])
    assert masks.shape == (2, 8 + 48) and masks[:, :8].sum() == 0
    assert masks[0, 8:].sum() > 0
    assert [p.name for p in layout.cutting_parts(prompt)] == ["T5"]  # registers never cut
    assert [p.name for p in layout.text_parts] == ["T5"]


def test_truncated_span_marks_only_kept_tokens(clip_tok):
    prompt = "word " * 70 + "'Far Away Text Here Beyond The Limit'"
    mask = token_mask(clip_tok, prompt, find_quoted_spans(prompt), 77)
    assert mask.shape == (77,)
    assert mask[-1] == 0  # the EOS slot is never marked
    assert 0 < mask.sum() < 7  # part of the span survives truncation, not all of it
