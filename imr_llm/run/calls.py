"""The one model call a parsed letter needs, with its cache key: the same for the live path and the
Batch API, so an answer collected from a batch is found by the live run and never asked twice."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..config import Settings
from ..core.load import Letter
from ..core.models import SCHEMA_VERSION
from ..core.segment import Layout
from ..extract.answers import FreeItems, LLMExtraction, free_items_model, response_model
from ..extract.prompts import (PROMPT_FILE, PROMPT_VERSION, UNKNOWN_PROMPT_FILE, UNKNOWN_PROMPT_VERSION, build_messages,
                               unknown_layout_messages, version_key)
from .cache import key

TRUNCATED = "llm_input_truncated: rationales were shortened to fit the token budget"


@dataclass
class Call:
    """``kind`` "llm" (a parsed letter: facts for its items) or "llm-free" (a letter in an unknown
    layout: the model lists its items). ``key`` is the answer's cache key (text, model, prompt, schema)."""
    kind: str
    key: str
    prompt_version: str
    letter: Letter
    layout: Layout
    model: str | None
    n_items: int

    @cached_property
    def _messages(self) -> tuple[list[dict], bool]:
        if self.kind == "llm-free":
            return unknown_layout_messages(self.letter), False
        return build_messages(self.layout, self.model)

    @property
    def messages(self) -> list[dict]:
        return self._messages[0]

    @property
    def truncated(self) -> bool:
        return self._messages[1]

    @property
    def answer_type(self) -> type:
        return answer_type(self.kind, self.n_items)

    @property
    def cached_type(self) -> type:
        """What a cached answer is read as: the plain type, without this layout's item count (a
        parser change may find another number of items; the facts then report the difference)."""
        return FreeItems if self.kind == "llm-free" else LLMExtraction


def answer_type(kind: str, n_items: int) -> type:
    return free_items_model() if kind == "llm-free" else response_model(n_items)


def plan(letter: Letter, lay: Layout, s: Settings) -> Call:
    if "unknown_layout" in lay.features:
        return Call("llm-free", key("llm-free", letter.text_sha256, s.label, version_key(UNKNOWN_PROMPT_VERSION, UNKNOWN_PROMPT_FILE),
                                    SCHEMA_VERSION), UNKNOWN_PROMPT_VERSION, letter, lay, s.model, 0)
    return Call("llm", key("llm", letter.text_sha256, s.label, version_key(PROMPT_VERSION, PROMPT_FILE), SCHEMA_VERSION),
                PROMPT_VERSION, letter, lay, s.model, len(lay.items))


def prompts_key() -> str:
    """Both prompts' keys: part of a finished record's cache key."""
    return ":".join((version_key(PROMPT_VERSION, PROMPT_FILE), version_key(UNKNOWN_PROMPT_VERSION, UNKNOWN_PROMPT_FILE)))
