"""Requests built on the text K/V swap (Paper A): edit a rendered word, and keep words from a list
out of images (safe text). Both become a batch of prompts plus a ``TextSwap``; the pipeline runs
them in one loop, extra images as extra rows.

* **edit**: images [A, B] (and the plain A), same noise; A takes B's text K/V at the localized
  blocks from the start step: A's image with B's text.
* **safe text**: every prompt whose quoted text holds a listed word gets a twin with the word
  replaced by its substitute; the prompt takes its twin's text K/V at the localized blocks only,
  so the scene and style of the original prompt stay while the word changes.

Which blocks and from which step: ``--edit-blocks`` / ``--edit-start``, else the model folder's
``amo_engine.json`` (``edit_blocks``, ``edit_start_step``; what ``amo-engine localize`` finds), else
the family's published default (SD3-medium: joint block 10, from step 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from amo_engine.pipeline.text_swap import TextSwap
from amo_engine.prompts import find_quoted_spans

DEFAULT_WORDS = "safe_text_words.txt"  # in amo_engine/data
DEFAULT_SUBSTITUTE = "LOVE"  # for a listed word that names none


def _quoted(prompt: str) -> list:
    """The prompt's quoted spans; a prompt without any has no text to edit."""
    spans = find_quoted_spans(prompt)
    if not spans:
        raise ValueError(f"the prompt {prompt!r} quotes no text to edit: put the word in quotes, e.g. "
                         "\"a sign that says 'OPEN'\"")
    return spans


def swap_target(prompt: str, target_text: str) -> str:
    """``prompt`` with the text of its first quoted span replaced by ``target_text``."""
    spans = _quoted(prompt)
    if not target_text.strip():
        raise ValueError("--target-text is empty: give the word the image should show instead")
    first = spans[0]
    return prompt[: first.start] + target_text.strip() + prompt[first.end :]


@dataclass(frozen=True)
class EditRequest:
    prompts: tuple[str, ...]  # [A, B] or [A, B, A]
    swap: TextSwap
    roles: tuple[str, ...]  # "edit", "target", "original" per image


def edit_request(prompt: str, target_prompt: str, blocks: Sequence[int], start_step: int,
                 keep_originals: bool = False) -> EditRequest:
    """A with B's text: images [A, B] (+ plain A), donors A -> B, everyone drawing the same noise."""
    if not find_quoted_spans(target_prompt):
        raise ValueError(f"the target prompt {target_prompt!r} quotes no text: quote the word it should render")
    _quoted(prompt)
    prompts, donors, roles = [prompt, target_prompt], [1, 1], ["edit", "target"]
    if keep_originals:
        prompts, donors, roles = prompts + [prompt], donors + [2], roles + ["original"]
    return EditRequest(tuple(prompts), TextSwap(tuple(donors), tuple(blocks), start_step), tuple(roles))


def edit_defaults(model) -> tuple[tuple[int, ...] | None, int]:
    """(blocks, start step) for edits on ``model`` (a LoadedModel): its settings, else the family's."""
    settings = model.settings
    blocks = settings.edit_blocks or model.family.edit_blocks
    start = settings.edit_start_step if settings.edit_start_step is not None else model.family.edit_start_step
    return (tuple(blocks) if blocks else None), start


# ---------------------------------------------------------------- safe text


def read_word_list(path: str | Path | None) -> dict[str, str]:
    """``WORD`` or ``WORD=SUBSTITUTE`` per line (``#`` comments); None: the shipped default list.
    Keys are upper-case; a word without a substitute maps to ``DEFAULT_SUBSTITUTE``."""
    if path is None:
        text = resources.files("amo_engine").joinpath("data", DEFAULT_WORDS).read_text()
        where = f"the default list ({DEFAULT_WORDS})"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--safe-text {path}: no such file; give a word list (one WORD or WORD=SUBSTITUTE "
                                    "a line) or use --safe-text default")
        text, where = path.read_text(), str(path)
    words: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word, _, substitute = (part.strip() for part in line.partition("="))
        if not word or not re.fullmatch(r"[\w' -]+", word):
            raise ValueError(f"{where} line {n}: {raw.strip()!r} is not WORD or WORD=SUBSTITUTE")
        words[word.upper()] = substitute or DEFAULT_SUBSTITUTE
    if not words:
        raise ValueError(f"{where} lists no words")
    return words


@dataclass(frozen=True)
class SafeTextRequest:
    prompts: tuple[str, ...]  # the user's prompts, then one twin per prompt with a listed word
    swap: TextSwap | None  # None: nothing to replace
    replaced: tuple[tuple[int, str, str], ...]  # (prompt index, word, substitute)
    images: int  # how many leading images are the user's


def safe_text_request(prompts: Sequence[str], words: dict[str, str], blocks: Sequence[int],
                      start_step: int) -> SafeTextRequest:
    """Twins with listed words replaced inside quoted text (whole words, any case)."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)
    twins, replaced, donors = [], [], list(range(len(prompts)))
    for i, prompt in enumerate(prompts):
        pieces, last = [], 0
        for span in find_quoted_spans(prompt):
            text = span.text(prompt)

            def substitute(match, i=i):
                word = match.group(0)
                replaced.append((i, word, words[word.upper()]))
                return words[word.upper()]

            pieces += [prompt[last : span.start], pattern.sub(substitute, text)]
            last = span.end
        twin = "".join(pieces) + prompt[last:]
        if twin != prompt:
            donors[i] = len(prompts) + len(twins)
            twins.append(twin)
    if not twins:
        return SafeTextRequest(tuple(prompts), None, (), len(prompts))
    all_prompts = tuple(prompts) + tuple(twins)
    donors += list(range(len(prompts), len(all_prompts)))  # twins keep their own text
    groups = list(range(len(prompts))) + [donors.index(len(prompts) + k) for k in range(len(twins))]
    swap = TextSwap(tuple(donors), tuple(blocks), start_step, noise_groups=tuple(groups))
    return SafeTextRequest(all_prompts, swap, tuple(replaced), len(prompts))
