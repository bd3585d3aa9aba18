"""Text in a letter addressed to a model. Decisions never come from the model, so an injection
changes nothing; the letter is flagged so a person looks at it."""
from __future__ import annotations

import re

_INJECTION = re.compile(
    r"ignore\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier)\s+instructions|disregard\s+(?:\w+\s+){0,3}instructions"
    r"|system\s+prompt|you\s+are\s+now\b|mark\s+(?:every|all)\s+items?|\"\s*\}\s*\]\s*\}|</?(?:tool|function|system)\b|\bassistant\s*:",
    re.IGNORECASE)

_INJECTION_HINTS = ("instruction", "prompt", "you are now", "mark every", "mark all", '"', "</", "assistant")


def injection_flag(text: str) -> str | None:
    low = text.lower()
    if any(k in low for k in _INJECTION_HINTS) and _INJECTION.search(text):
        return "prompt_injection_suspected: the letter contains text addressed to a model; decisions come from the layout parser"
    return None
