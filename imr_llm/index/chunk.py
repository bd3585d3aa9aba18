"""Records to retrieval chunks: each item's rationale (sentence-split to a token budget) and the summary.

Chunk text is cut from the *original* letter text carried in the record's evidence, so every
chunk keeps exact offsets into the letter. The embedded text gets a context prefix (request,
decision, surgery history, regions) -- measured here, it helps dense embedders rank fusion cases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..providers import tokens
from ..core.models import DecisionRecord

BUDGET = 220  # tokens per chunk body
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9(\"])")
_WS = re.compile(r"\s+")


@dataclass
class Chunk:
    id: str
    letter_id: str
    item: int  # -1 = clinical summary
    n: int
    text: str  # whitespace-normalised letter text
    start: int  # offsets into the letter text
    end: int
    context: str
    quote: str = ""  # the letter's exact text[start:end] (what answers quote)

    @property
    def embed_text(self) -> str:
        return f"{self.context}\n{self.text}"


def flat(quote: str) -> str:
    """A chunk's text as embedded and indexed: the letter's words with whitespace folded."""
    return _WS.sub(" ", quote).strip()


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of sentences in ``text`` (original, with line breaks)."""
    out, pos = [], 0
    for m in _SENT_END.finditer(text):
        out.append((pos, m.start()))
        pos = m.end()
    if pos < len(text) and text[pos:].strip():
        out.append((pos, len(text.rstrip())))
    return [(s, e) for s, e in out if e > s]


def split(text: str, base: int, budget: int = BUDGET) -> list[tuple[int, int]]:
    """Group sentences into chunks of <= ``budget`` tokens; one sentence overlap only when split."""
    sents = sentences(text)
    if not sents:
        return []
    if tokens.count(_WS.sub(" ", text)) <= budget:
        return [(base + sents[0][0], base + sents[-1][1])]
    sizes = [tokens.count(_WS.sub(" ", text[s:e])) for s, e in sents]
    chunks, i = [], 0
    while i < len(sents):
        j, total = i, 0
        while j < len(sents) and (total + sizes[j] <= budget or j == i):
            total += sizes[j]
            j += 1
        chunks.append((base + sents[i][0], base + sents[j - 1][1]))
        if j >= len(sents):
            break
        i = j - 1 if j - 1 > i else j  # overlap one sentence
    return chunks


def _ev(rec: DecisionRecord, field: str):
    return next((e for e in rec.evidence if e.field == field and e.status != "not_found"), None)


def context_for(rec: DecisionRecord, item_index: int) -> str:
    parts = []
    if item_index >= 0:
        it = rec.items[item_index]
        parts.append(f"Request: {it.request}. Decision: {it.decision}.")
        if it.body_regions:
            parts.append("Body regions: " + ", ".join(it.body_regions) + ".")
    else:
        parts.append("Clinical case summary.")
    if rec.surgeries:
        parts.append("Surgery history: " + "; ".join(
            " ".join(x for x in (s.procedure, s.level, s.date) if x) for s in rec.surgeries) + ".")
    else:
        parts.append("No surgery history stated.")
    return " ".join(parts)


def chunks_for(rec: DecisionRecord, budget: int = BUDGET) -> list[Chunk]:
    out: list[Chunk] = []
    targets = [(i, f"items[{i}].rationale") for i in range(len(rec.items))] + [(-1, "clinical_summary")]
    for item_index, path in targets:
        ev = _ev(rec, path)
        if ev is None:
            continue
        ctx = context_for(rec, item_index)
        for n, (s, e) in enumerate(split(ev.quote, ev.start, budget)):
            text = flat(ev.quote[s - ev.start:e - ev.start])
            cid = f"{rec.letter_id}:{'s' if item_index < 0 else item_index}:{n}"
            out.append(Chunk(cid, rec.letter_id, item_index, n, text, s, e, ctx, ev.quote[s - ev.start:e - ev.start]))
    return out
