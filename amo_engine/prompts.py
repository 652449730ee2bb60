"""Quoted-text spans: find them in a prompt, map characters to tokens through the fast
tokenizers' offset mappings, and build span masks in each model's text-token layout.

The span rule (``find_quoted_spans``):

* Quotes: straight single/double and curly single/double. A quote between two letters (It's,
  Today’s) is an apostrophe, never a quote.
* A quote mark *can open* when it stands at the start or after a non-alphanumeric character and is
  followed by a non-space; it *can close* when it follows a non-space and stands at the end or
  before a non-alphanumeric character. Marks that can do neither are apostrophes and are ignored.
* Per quote kind, the marks that remain form alternating runs: some openers, then some closers.
  Each run of openers with the run of closers after it is **one** span, from the first opener to
  the first closer of the run that does not end an elision — the quote that ends the quoted
  phrase. A closer ends an elision when the word before it is ``n`` or ``o`` or ends in ``in`` or
  ``s`` (Rock 'n' Roll, Top o' the Morning, Rockin', The Smiths' Hits) and another closer follows
  in the run; with no other candidate, the run's last closer ends the span. So an elision at the
  start, middle or end of quoted text — ``''Twas the Night'``, ``'Rock 'n' Roll'``,
  ``'Rockin' Robin'``, ``'Rollin''`` — never closes the span early, ``'OPEN' and 'SHUT'`` stays
  two spans (an opener separates them), and a possessive after a span (``'WOOF' on the dogs'
  bowl``) is left outside it.
* Closers with no opener before them (a possessive such as ``the dogs' bowl``) and openers with no
  closer after them (an unterminated quote) give no span. A span inside another one (``"Joe's
  'Diner'"``) is part of the outer span. Spans of only spaces are dropped; the rest are trimmed.
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


def _can_close(s: str, i: int) -> bool:
    before_ok = i > 0 and not s[i - 1].isspace()
    after_ok = i + 1 == len(s) or not s[i + 1].isalnum()
    return before_ok and after_ok


def _spans_of_kind(s: str, open_ch: str, close_ch: str) -> list[tuple[int, int]]:
    """(opening quote index, closing quote index) of each span of one quote kind."""
    marks: list[tuple[int, str]] = []  # (index, "O" | "C") in order
    for i, ch in enumerate(s):
        if ch not in (open_ch, close_ch):
            continue
        opens = ch == open_ch and _can_open(s, i)
        closes = ch == close_ch and _can_close(s, i)
        if opens and closes:  # between two punctuation marks: a closer once some quote has opened
            closes = any(k == "O" for _, k in marks)
            opens = not closes
        if opens or closes:
            marks.append((i, "O" if opens else "C"))
    spans, first_open, closers = [], None, []
    for i, kind in marks + [(len(s), "O")]:  # a sentinel opener ends the last run
        if kind == "O":
            if closers:
                spans.append((first_open, _phrase_end(s, closers)))
                first_open, closers = None, []
            if first_open is None:
                first_open = i
        elif first_open is not None:
            closers.append(i)
    return spans


def _ends_elision(s: str, i: int) -> bool:
    """Whether the quote mark at ``i`` ends an elision: the word before it is n/o or ends in in/s."""
    j = i
    while j > 0 and s[j - 1].isalpha():
        j -= 1
    word = s[j:i].lower()
    return word in ("n", "o") or word.endswith(("in", "s"))


def _phrase_end(s: str, closers: list[int]) -> int:
    """The closer that ends the quoted phrase: the first that ends no elision, else the last."""
    return next((i for i in closers[:-1] if not _ends_elision(s, i)), closers[-1])


def find_quoted_spans(prompt: str) -> list[Span]:
    """Every quoted span in ``prompt``, in order (see the module doc for the rule). Never raises."""
    raw = sorted(pair for o, c in _PAIRS.items() for pair in _spans_of_kind(prompt, o, c))
    spans: list[Span] = []
    outer_end = -1
    for open_i, close_i in raw:
        if open_i < outer_end:  # inside an earlier span of another kind
            continue
        outer_end = close_i
        text = prompt[open_i + 1 : close_i]
        lead = len(text) - len(text.lstrip())
        trail = len(text) - len(text.rstrip())
        if text.strip():
            spans.append(Span(open_i + 1 + lead, close_i - trail))
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
class TextPart:
    name: str  # "CLIP", "T5" or "registers", for messages
    tokenizer: object  # None: positions no prompt text reaches (AuraFlow's register tokens)
    length: int


@dataclass(frozen=True)
class TextLayout:
    """How a family lays out its text tokens: consecutive parts, each a tokenizer and a length."""

    parts: tuple[TextPart, ...]

    @property
    def length(self) -> int:
        return sum(p.length for p in self.parts)

    @property
    def text_parts(self) -> tuple[TextPart, ...]:
        """The parts prompt text reaches (not register tokens)."""
        return tuple(p for p in self.parts if p.tokenizer is not None)

    def span_mask(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, T] float mask of quoted-text tokens, the span marked in every part."""
        return self.mask_of(prompts, [find_quoted_spans(prompt) for prompt in prompts])

    def mask_of(self, prompts: Sequence[str], spans: Sequence[Sequence[Span]]) -> torch.Tensor:
        """[B, T] float mask of the tokens overlapping ``spans[i]`` (character spans) of ``prompts[i]``."""
        rows = [torch.cat([token_mask(p.tokenizer, prompt, row, p.length) if p.tokenizer is not None
                           else torch.zeros(p.length) for p in self.parts])
                for prompt, row in zip(prompts, spans)]
        return torch.stack(rows) if rows else torch.zeros(0, self.length)  # [B, T]

    def cutting_parts(self, prompt: str) -> list[TextPart]:
        """The parts whose token limit cuts some of ``prompt``'s quoted text (empty: none cut)."""
        spans = find_quoted_spans(prompt)
        return [p for p in self.parts
                if spans and p.tokenizer is not None and span_cut(p.tokenizer, prompt, spans, p.length)]


def sd3_layout(clip_tokenizer, t5_tokenizer, clip_length: int, t5_length: int) -> TextLayout:
    """SD3: CLIP tokens (L and G share positions) followed by T5 tokens (77 + 256 = 333 by default)."""
    return TextLayout((TextPart("CLIP", clip_tokenizer, clip_length), TextPart("T5", t5_tokenizer, t5_length)))


def flux_layout(t5_tokenizer, t5_length: int) -> TextLayout:
    """FLUX: the T5 sequence only (512 for dev, 256 for schnell)."""
    return TextLayout((TextPart("T5", t5_tokenizer, t5_length),))


def auraflow_layout(t5_tokenizer, registers: int, t5_length: int) -> TextLayout:
    """AuraFlow: the transformer's learned register tokens (8), then the T5 sequence (256 by default)."""
    return TextLayout((TextPart("registers", None, registers), TextPart("T5", t5_tokenizer, t5_length)))
