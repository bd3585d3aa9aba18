"""Prompt files (``prompts/``, shipped as package data) and the messages built from a parsed letter.

The model is given the parsed structure (summary, request lines, rationales), never the
boilerplate or the header, and is asked only for what the parser cannot read.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from ..core.load import Letter
from ..core.segment import Layout
from ..providers import tokens

PROMPT_FILE = "extract_v2.md"
# Part of every cache key: bump with the prompt file or with the answer types (answers.py; the schema
# is part of what the model reads).
PROMPT_VERSION = "extract-v2.1"  # v2.1: surgeries[].body_region no longer asked for
MAX_INPUT_TOKENS = 6000

UNKNOWN_PROMPT_FILE = "unknown_layout_v1.md"
UNKNOWN_PROMPT_VERSION = "unknown-layout-v1"
# The text each version shipped with (``prompt_digest``). A prompt edited without a new version
# gets its digest into the cache keys, so it never meets answers to the old text; the shipped text
# keeps the keys it always had, so upgrading imr-llm never throws the answer cache away.
# tests/test_units.py::test_shipped_prompts_match_their_versions fails when a file changes alone.
SHIPPED = {PROMPT_VERSION: "3e51a5fc44b2", UNKNOWN_PROMPT_VERSION: "c576c34a29ff"}
UNKNOWN_MAX_CHARS = 24000  # the letter text given to the model (the decisions come early in every known template)


def _prompt_dir():
    """Installed: the package data ``imr_llm.prompts`` (pyproject maps it to ``prompts/``). From a
    checkout (tests, ``python -m``) the top-level ``prompts/`` folder itself, where people edit them."""
    checkout = Path(__file__).resolve().parents[2] / "prompts"
    if (checkout / PROMPT_FILE).is_file() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    from importlib.resources import files

    return files("imr_llm.prompts")


def read_prompt(name: str) -> str:
    """A prompt file from ``prompts/`` without its HTML comments (the version notes)."""
    text = _prompt_dir().joinpath(name).read_text(encoding="utf-8")
    return re.sub(r"<!--.*?-->\s*", "", text, flags=re.DOTALL).strip()


@lru_cache(maxsize=8)
def prompt_digest(name: str) -> str:
    """Part of the answer cache keys with the version: an edited prompt file never meets an answer
    to the old one, even when nobody bumped the version."""
    return hashlib.sha256(read_prompt(name).encode()).hexdigest()[:12]


def version_key(version: str, name: str) -> str:
    """The prompt's part of a cache key: its version, plus its digest when the text is not the one
    that version shipped with."""
    d = prompt_digest(name)
    return version if SHIPPED.get(version) == d else f"{version}+{d}"


def system_prompt() -> str:
    return read_prompt(PROMPT_FILE)


def build_messages(lay: Layout, model: str | None = None, budget: int = MAX_INPUT_TOKENS) -> tuple[list[dict], bool]:
    """The compact user message: summary + each item's request, decision and rationale."""
    def render(cut: int | None) -> str:
        parts = [f"CLINICAL CASE SUMMARY:\n{lay.summary.text if lay.summary else '(none)'}"]
        for it in lay.items:
            r = it.rationale.text if it.rationale else ""
            if cut is not None and len(r) > cut:
                r = r[:cut] + " [...]"
            parts.append(f"ITEM {it.index}: {it.request.text}\nDECISION: {it.decision.text}\nRATIONALE: {r}")
        return "\n\n".join(parts)

    body, truncated = render(None), False
    # a BPE token covers at least one byte: a text of <= budget bytes cannot exceed the budget
    if len(body.encode()) > budget and tokens.count(body, model) > budget:
        truncated = True
        cut = 2000
        while cut > 200 and tokens.count(body := render(cut), model) > budget:
            cut = int(cut * 0.7)
    msgs = [{"role": "system", "content": system_prompt()}, {"role": "user", "content": body}]
    return msgs, truncated


def unknown_layout_messages(letter: Letter) -> list[dict]:
    return [{"role": "system", "content": read_prompt(UNKNOWN_PROMPT_FILE)},
            {"role": "user", "content": "LETTER:\n" + letter.norm.text[:UNKNOWN_MAX_CHARS]}]
