"""Quoted-text spans: find them in a prompt, map characters to tokens through the fast
tokenizers' offset mappings, and build span masks in each model's text-token layout.

Quotes: straight single/double and curly single/double. A straight or curly single quote between
two letters (It's, Today’s) is an apostrophe, never a quote. An opening quote stands at the start
or after a non-alphanumeric character; a closing quote is followed by the end or a
non-alphanumeric character.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

_PAIRS = {"'": "'", '"': '"', "\u2018": "\u2019", "\u201c": "\u201d"}


@dataclass(frozen=True)
class Span:
    start: int  # first character of the quoted text (after the opening quote)
    end: int  # one past its last character (the closing quote's index)

    def text(self, prompt: str) -> str:
        return prompt[self.start : self.end]


def _can_open(s: str, i: int) -> bool:
    before_ok = i == 0 or not s[i - 1].isalnum()
    after_ok = i + 1 < len(s) and not s[i + 1].isspace()
    return before_ok and after_ok


def _can_close(s: str, i: int, start: int) -> bool:
    if i == start or s[i - 1].isspace():
        return False
    return i + 1 == len(s) or not s[i + 1].isalnum()


def find_quoted_spans(prompt: str) -> list[Span]:
    """Every quoted span in ``prompt``, in order; unbalanced quotes are ignored. Never raises."""
    spans: list[Span] = []
    i, n = 0, len(prompt)
    while i < n:
        ch = prompt[i]
        close = _PAIRS.get(ch)
        if close is None or not _can_open(prompt, i):
            i += 1
            continue
        j = i + 1
        found = -1
        while j < n:
            if prompt[j] == close and _can_close(prompt, j, i + 1):
                found = j
                break
            j += 1
        if found < 0:
            i += 1
            continue
        text = prompt[i + 1 : found]
        lead = len(text) - len(text.lstrip())
        trail = len(text) - len(text.rstrip())
        if text.strip():
            spans.append(Span(i + 1 + lead, found - trail))
        i = found + 1
    return spans


def token_mask(tokenizer, prompt: str, spans: Sequence[Span], max_length: int) -> torch.Tensor:
    """[max_length] 0/1 mask of the tokens (as the pipeline tokenizes: padded, truncated) that
    overlap any span. Special and padding tokens (empty offsets) are never marked."""
    enc = tokenizer(
        prompt,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_offsets_mapping=True,
    )
    mask = torch.zeros(max_length)  # [T]
    for t, (a, b) in enumerate(enc["offset_mapping"][:max_length]):
        if b > a and any(a < sp.end and b > sp.start for sp in spans):
            mask[t] = 1.0
    return mask


def span_cut(tokenizer, prompt: str, spans: Sequence[Span], max_length: int) -> bool:
    """True when truncation to ``max_length`` tokens drops part of a quoted span."""
    enc = tokenizer(prompt, max_length=max_length, truncation=True, return_offsets_mapping=True)
    kept_end = max((b for a, b in enc["offset_mapping"] if b > a), default=0)
    return any(sp.end > kept_end for sp in spans)


@dataclass(frozen=True)
class TextLayout:
    """How a family lays out its text tokens: consecutive (tokenizer, length) parts."""

    parts: tuple[tuple[object, int], ...]

    @property
    def length(self) -> int:
        return sum(n for _, n in self.parts)

    def span_mask(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, T] float mask of quoted-text tokens, the span marked in every part."""
        rows = []
        for prompt in prompts:
            spans = find_quoted_spans(prompt)
            rows.append(torch.cat([token_mask(tok, prompt, spans, n) for tok, n in self.parts]))
        return torch.stack(rows) if rows else torch.zeros(0, self.length)  # [B, T]

    def cut_spans(self, prompts: Sequence[str]) -> list[tuple[int, int]]:
        """(row, max_length) for every prompt whose quoted text a part's token limit cuts."""
        out = []
        for i, prompt in enumerate(prompts):
            spans = find_quoted_spans(prompt)
            for tok, n in self.parts:
                if spans and span_cut(tok, prompt, spans, n):
                    out.append((i, n))
                    break
        return out


def sd3_layout(clip_tokenizer, t5_tokenizer, clip_length: int, t5_length: int) -> TextLayout:
    """SD3: CLIP tokens (L and G share positions) followed by T5 tokens (77 + 256 = 333 by default)."""
    return TextLayout(((clip_tokenizer, clip_length), (t5_tokenizer, t5_length)))


def flux_layout(t5_tokenizer, t5_length: int) -> TextLayout:
    """FLUX: the T5 sequence only (512 for dev, 256 for schnell)."""
    return TextLayout(((t5_tokenizer, t5_length),))
