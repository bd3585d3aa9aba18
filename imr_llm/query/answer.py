"""Answers with verified citations.

* Counting and listing questions ("how many...", "which letters...") are answered exactly from the
  extracted records, not from similarity search.
* Other questions: hybrid retrieval, then either an LLM answer whose every citation is checked
  (the quote must be in the cited passage, the passage must have been retrieved) or, with no model,
  an extractive answer: the best sentences of each retrieved passage, grouped by letter.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from pydantic import BaseModel, Field

from ..index.chunk import sentences
from ..core.lexicon import sentence_role
from ..core.ground import locate
from ..core.filters import Filters
from ..index import Index
from ..core.question import Reading, read
from .retrieve import Hit, Retriever

PROMPT_FILE = "answer_v1.md"


MAX_QUESTION = 2000


class AnswerError(Exception):
    """The model could not write an answer (deadline, unreachable, refused); one line."""


# --- results -------------------------------------------------------------------------------------

@dataclass
class Citation:
    marker: str  # "[CM14-0095145 #1]"
    letter_id: str
    cite_id: str
    item: int  # 1-based item number, 0 = clinical summary
    source_path: str
    start: int
    end: int
    quote: str
    status: str = "verified"


@dataclass
class AnswerResult:
    question: str
    mode: str
    filters: str  # the reading in plain words
    answer: str
    citations: list[Citation] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    count: Optional[int] = None
    letters: list[dict] = field(default_factory=list)
    model: str = "none"
    reading: dict = field(default_factory=dict)  # mode, filters (structured), unused words, sentence
    stats: Optional[dict] = None  # statistical questions: totals and groups, as `imr stats --json`

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AnswerResult":
        """The result ``to_dict`` wrote (an `imr serve` answer read by `imr ask`)."""
        return cls(**{**d, "citations": [Citation(**c) for c in d.get("citations") or []]})


def marker(row: dict) -> str:
    return f"[{row['cite_id']} #{row['item'] + 1}]" if row["item"] >= 0 else f"[{row['cite_id']} summary]"


# --- counting and listing --------------------------------------------------------------------------

def count_or_list(index: Index, question: str, f: Filters, mode: str, reading: Reading | None = None) -> AnswerResult:
    f = f.without("kind")
    rows = index.store.select_items(f, "letter_id, item, cite_id, request, decision, category", order="letter_id, item")
    paths = index.store.letter_paths()
    letters: dict[str, dict] = {}
    for lid, item, cite, req, dec, cat in rows:
        src, all_paths = paths.get(lid, ("", []))
        e = letters.setdefault(lid, {"letter_id": lid, "cite_id": cite, "source_path": src, "paths": all_paths, "items": []})
        e["items"].append({"item": item + 1, "request": req, "decision": dec, "category": cat})
    n_items, n_letters = len(rows), len(letters)
    total = index.store.count_items()[0]
    what = f"{n_items} disputed item{'s' if n_items != 1 else ''} in {n_letters} letter{'s' if n_letters != 1 else ''}"
    head = reading.sentence() + "\n" if reading else ""
    if reading and reading.unused:
        head += (f"Caution: this {'count' if mode == 'count' else 'list'} ignores part of the question "
                 f"({', '.join(reading.unused)}): it may not be the number you asked for.\n")
    text = head + (f"{what} match; counted exactly from the {total} extracted items in the index."
                   if mode == "count" else f"{what} match:")
    return AnswerResult(question, mode, f.describe(), text, count=n_items, letters=list(letters.values()),
                        reading=reading.to_dict() if reading else {})


# --- extractive and LLM answers -------------------------------------------------------------------

_WORD = re.compile(r"[a-z]{3,}")
_STOP = {"why", "were", "was", "the", "and", "for", "what", "which", "how", "after", "with", "that", "this",
         "are", "requests", "request", "did", "does", "grounds", "reasons", "reason", "upheld", "denied"}


def _terms(text: str) -> set[str]:
    return {w[:6] for w in _WORD.findall(text.lower()) if w not in _STOP}


def _original(row: dict) -> tuple[str, int] | None:
    """The exact letter text of a chunk (stored with it) and its offset in the letter."""
    return (row["quote"], row["start"]) if row.get("quote") else None


# The sentences that carry a decision are the reviewer's reasons for this case and the conclusion on
# this request; a sentence describing what a guideline says in general matches a question's words
# as well but explains nothing about why this request went the way it did.
ROLE_BONUS = {"case": 2.0, "conclusion": 1.5, "other": 0.0, "guideline": -2.0}


def best_sentences(question: str, row: dict, n: int = 2) -> list[tuple[int, int, str]]:
    """(start, end, quote) in letter offsets of the sentences of a chunk that best explain its
    decision and match the question."""
    orig = _original(row)
    if orig is None:
        return []
    text, base = orig
    q = _terms(question)
    scored = []
    for i, (s, e) in enumerate(sentences(text)):
        sent = text[s:e]
        overlap = len(q & _terms(sent))
        reason_bonus = 0.5 if re.search(r"\bno\b|\bnot\b|without|unclear|however", sent, re.IGNORECASE) else 0
        scored.append((overlap + reason_bonus + ROLE_BONUS[sentence_role(sent)], -i, s, e, sent))
    scored.sort(reverse=True)
    picked = sorted(scored[:n], key=lambda x: x[2])
    return [(base + s, base + e, sent) for _, _, s, e, sent in picked]


def extractive(index: Index, question: str, hits: list[Hit], f: Filters) -> AnswerResult:
    lines, cites = [], []
    for h in hits:
        row = h.row
        mk = marker(row)
        head = f"{mk} {row['request'] or 'Clinical case summary'}" + (f" — {row['decision']}" if row["decision"] else "")
        lines.append(head)
        for s, e, q in best_sentences(question, row):
            lines.append(f"    “{' '.join(q.split())}”")
            cites.append(Citation(mk, row["letter_id"], row["cite_id"], row["item"] + 1, row["source_path"], s, e, q))
    if not hits:
        text = f"No passages matched (filters: {f.describe()})."
    else:
        text = (f"No model configured: the {len(hits)} most relevant passages (filters: {f.describe()}), "
                f"one letter each, with the sentences that best match the question:\n" + "\n".join(lines))
    return AnswerResult(question, "why", f.describe(), text, cites)


class CitedQuote(BaseModel):
    source: int = Field(description="number of the passage, as in [n]")
    quote: str = Field(description="verbatim sentence copied from that passage", max_length=500)


class LLMAnswer(BaseModel):
    answer: str = Field(description="the answer; cite passages inline as [n]", max_length=4000)
    citations: list[CitedQuote] = Field(max_length=16)


def llm_answer(index: Index, provider, question: str, hits: list[Hit], f: Filters, model_label: str) -> AnswerResult:
    from ..extract.prompts import read_prompt

    system = read_prompt(PROMPT_FILE)
    passages = []
    for n, h in enumerate(hits, 1):
        r = h.row
        passages.append(f"[{n}] {marker(r)} request: {r['request'] or 'clinical case summary'}; decision: {r['decision'] or '-'}\n{r['text']}")
    user = f"QUESTION: {question}\n\nPASSAGES:\n" + "\n\n".join(passages)
    async def go() -> LLMAnswer:
        try:
            value, _ = await provider.complete([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                               LLMAnswer, max_tokens=900)
            return value
        finally:
            await provider.aclose()  # each question runs in its own event loop

    from ..config import env

    deadline = env().answer_deadline
    try:
        ans = asyncio.run(asyncio.wait_for(go(), deadline))
    except asyncio.TimeoutError:
        raise AnswerError(f"no answer from the model within {deadline:g} s (IMR_ANSWER_DEADLINE); "
                          f"check the server, or ask without --model for an extractive answer") from None
    except Exception as e:  # connection refused, bad key, unreachable host: one line, not a traceback
        raise AnswerError(f"the model could not answer ({type(e).__name__}: {str(e)[:160]}); "
                          f"ask without --model for an extractive answer") from None
    cites, removed, ok_sources = [], [], set()
    for c in ans.citations:
        if not 1 <= c.source <= len(hits):
            removed.append(f"[{c.source}] cites a passage that was not retrieved")
            continue
        row = hits[c.source - 1].row
        orig = _original(row)
        hit = locate(c.quote, orig[0]) if orig else None
        if hit is None:
            removed.append(f"[{c.source}] quote not found in {marker(row)}: {c.quote[:80]!r}")
            continue
        s, e, status, _ = hit
        ok_sources.add(c.source)
        cites.append(Citation(marker(row), row["letter_id"], row["cite_id"], row["item"] + 1, row["source_path"],
                              orig[1] + s, orig[1] + e, orig[0][s:e], "verified" if status == "exact" else "verified_fuzzy"))

    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        if n in ok_sources:
            return marker(hits[n - 1].row)
        return ""

    text = re.sub(r"\[(\d+)\]", sub, ans.answer)
    for n in sorted({int(x) for x in re.findall(r"\[(\d+)\]", ans.answer)} - ok_sources):
        if not any(r.startswith(f"[{n}]") for r in removed):
            removed.append(f"[{n}] cited without a verifiable quote")
    return AnswerResult(question, "why", f.describe(), re.sub(r"[ \t]+", " ", text).strip(), cites, removed, model=model_label)


def stats_answer(index: Index, question: str, f: Filters, reading: Reading) -> AnswerResult:
    """A statistical question answered with the exact table of ``imr stats`` and cited letters per row."""
    from .stats import compute, load_facets

    res = compute(index.store, reading.group_by, f, load_facets(index.dir))
    t = res["total"]
    lines = [reading.sentence()]
    if reading.unused:
        lines.append(f"Caution: these numbers ignore part of the question ({', '.join(reading.unused)}).")
    def rate(g: dict) -> str:
        if g["overturn_rate"] is None:
            return "no items"
        lo, hi = g["ci95"]
        thin = "; few items, read the interval, not the rate" if g["thin"] else ""
        return f"{g['overturned']} of {g['items']} overturned = {g['overturn_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%}{thin})"
    lines.append(f"All matching: {t['items']} items in {t['letters']} letters; {rate(t)}. Letters: {' '.join(t['cited'])}")
    groups = res["groups"] if reading.group_by else []
    if reading.measures == "rate" and groups:
        groups = sorted(groups, key=lambda g: (-(g["overturn_rate"] or 0), -g["items"]))
    # items with no value for the grouping field (e.g. no drug class: not a medication) come last
    groups = [g for g in groups if None not in g["key"].values()] + [g for g in groups if None in g["key"].values()]
    for g in groups[:25]:
        key = ", ".join(f"{k}={v}" for k, v in g["key"].items())
        lines.append(f"  {key}: {g['items']} items in {g['letters']} letters; {rate(g)}. Letters: {' '.join(g['cited'])}")
    if len(groups) > 25:
        lines.append(f"  ... {len(groups) - 25} more groups (imr stats --by {' --by '.join(reading.group_by)})")
    if reading.group_by:
        lines.append(res["note"] + ".")
    out = AnswerResult(question, "stats", f.describe(), "\n".join(lines), count=t["items"], reading=reading.to_dict())
    out.stats = res
    return out


def latest_decision(index: Index) -> str | None:
    return index.latest_decision()


def ask(index: Index, question: str, k: int = 6, filters: Filters | None = None, provider=None,
        model_label: str = "none", retriever: Retriever | None = None) -> AnswerResult:
    """Answer ``question``. Filters given as options are added to those read from the question
    (a contradiction between the two is a ``FilterError``, never a silent choice). A long-running
    caller passes its ``retriever`` (segments opened once, over ``index``)."""
    if len(question) > MAX_QUESTION:  # reading a 100 KB "question" takes seconds: a shared server's problem
        raise AnswerError(f"the question is {len(question):,} characters; ask in at most {MAX_QUESTION:,}")
    reading = read(question, latest_decision(index))
    f = reading.filters.merged(filters) if filters is not None and filters.active() else reading.filters
    reading.filters = f
    if reading.refused:
        return AnswerResult(question, reading.mode, f.describe(), reading.refused, reading=reading.to_dict())
    if reading.mode in ("count", "list"):
        return count_or_list(index, question, f, reading.mode, reading)
    if reading.mode == "stats":
        return stats_answer(index, question, f, reading)
    f = f.without("kind")
    hits = (retriever or Retriever(index)).search(question, k=k, filters=f)
    res = extractive(index, question, hits, f) if provider is None or not hits else llm_answer(index, provider, question, hits, f, model_label)
    res.reading = reading.to_dict()
    res.answer = reading.sentence() + "\n" + res.answer
    return res
