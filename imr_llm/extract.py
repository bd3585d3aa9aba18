"""One letter to one grounded ``DecisionRecord``: layout parse, rules, optional LLM, grounding.

The LLM is given the parsed structure (summary, request lines, rationales), never the boilerplate,
and asked only for what the parser cannot read. Its answer is typed by ``LLMExtraction``.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field, create_model

from . import lexicon as lx
from . import tokens
from .ground import Assembler, locate
from .load import Letter, LetterError
from .models import SCHEMA_VERSION, Category, DecisionRecord, Reason, Region, Sex, Usage
from .rules import Fact, layout_facts, rule_facts
from .segment import Layout, parse

PROMPT_FILE = "extract_v2.md"
# Part of every cache key: bump with the prompt file or with the answer types below (the schema is
# part of what the model reads).
PROMPT_VERSION = "extract-v2.1"  # v2.1: surgeries[].body_region no longer asked for
MAX_INPUT_TOKENS = 6000


# --- what the model fills -----------------------------------------------------------------------
# Every list has max_length: without it small models loop inside a list until max_tokens.

def _strip_titles(node, in_names: bool = False):
    """Drop pydantic's generated ``title`` keywords: the model gains nothing from "Body Regions"
    next to ``body_regions``, and they were 13% of the schema's tokens."""
    if isinstance(node, dict):
        return {k: _strip_titles(v, k in ("properties", "$defs")) for k, v in node.items() if in_names or k != "title"}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


class _Answer(BaseModel):
    @classmethod
    def model_json_schema(cls, *args, **kwargs):
        schema = super().model_json_schema(*args, **kwargs)
        title = schema.get("title")
        schema = _strip_titles(schema)
        if title:  # instructor names the tool after the top-level title
            schema["title"] = title
        return schema


# Descriptions only where the prompt (prompts/extract_v2.md) does not already say it.
class LLMReason(BaseModel):
    code: Reason
    quote: str = Field(max_length=400)


# Every key is required (null/[] allowed): grammar-constrained local models then consider each
# field instead of skipping to the end, and remote models cannot silently omit one.
class LLMItem(BaseModel):
    index: int
    decision: str
    category: Optional[Category]
    quantity: Optional[int]
    frequency: Optional[str]
    body_regions: list[Region] = Field(max_length=6)
    denial_reasons: list[LLMReason] = Field(max_length=6)


class LLMSurgery(BaseModel):
    procedure: str  # its body region is read from the letter (procedure, then quote), not asked for
    level: Optional[str] = Field(description="spinal level as written, e.g. L3-L4")
    date: Optional[str] = Field(description="as written")
    quote: str = Field(max_length=400)


class LLMExtraction(_Answer):
    """Facts read from the parsed letter."""

    age: Optional[int]
    sex: Optional[Sex]
    claimant_quote: Optional[str] = Field(description="verbatim fragment stating age and/or sex", max_length=300)
    diagnoses: list[str] = Field(max_length=12)
    prior_treatments: list[str] = Field(max_length=12)
    surgeries: list[LLMSurgery] = Field(max_length=6)
    items: list[LLMItem] = Field(max_length=40)


# --- letters in a layout the parser does not know -------------------------------------------------

UNKNOWN_PROMPT_FILE = "unknown_layout_v1.md"
UNKNOWN_PROMPT_VERSION = "unknown-layout-v1"
UNKNOWN_MAX_CHARS = 24000  # the letter text given to the model (the decisions come early in every known template)


class FreeItem(BaseModel):
    request: str = Field(max_length=400)
    decision: Literal["Upheld", "Overturned"]
    decision_quote: str = Field(max_length=600)


class FreeItems(_Answer):
    """The disputed items of a letter in an unknown layout."""

    items: list[FreeItem] = Field(max_length=20)


@lru_cache(maxsize=1)
def free_items_model() -> type[FreeItems]:
    from instructor import openai_schema

    return openai_schema(FreeItems)


def unknown_layout_messages(letter: Letter) -> list[dict]:
    return [{"role": "system", "content": read_prompt(UNKNOWN_PROMPT_FILE)},
            {"role": "user", "content": "LETTER:\n" + letter.norm.text[:UNKNOWN_MAX_CHARS]}]


_SAYS_UPHELD = re.compile(r"not\s*medically\s+necessary|\bupheld\b|\bdenied\b|\bdenial\s+(?:is|was)\s+upheld|non-?certif\w*|"
                          r"\bnot\s+(?:supported|recommended|indicated|warranted|approved|certified)", re.IGNORECASE)
_SAYS_OVERTURNED = re.compile(r"\bmedically\s+necessary\b|\boverturned\b|\bapproved\b|\bcertified\b|"
                              r"\bis\s+(?:supported|recommended|indicated|warranted)", re.IGNORECASE)


def free_item_facts(x: FreeItems, text: str) -> tuple[list[Fact], list[Fact], list[str]]:
    """Ground the model's items of an unknown-layout letter: the request and the decision sentence
    must be found in the letter, and the sentence must say that decision. Returns (kept facts,
    dropped facts, flags); each kept item gets its request, decision and rule facts (category...)."""
    kept, dropped, n = [], [], 0
    for it in x.items:
        req = locate(it.request, text)
        dq = locate(it.decision_quote, text)
        sentence = text[dq[0]:dq[1]] if dq else ""
        says = ("Upheld" if _SAYS_UPHELD.search(sentence) else "Overturned" if _SAYS_OVERTURNED.search(sentence) else None)
        if req is None or dq is None or says != it.decision:
            why = ("request not found in the letter" if req is None else "decision sentence not found in the letter" if dq is None
                   else f"the quoted sentence does not say {it.decision}")
            dropped.append(Fact("items[]", f"{it.request[:80]} / {it.decision} ({why})", origin="llm"))
            continue
        p = f"items[{n}]"
        rs, re_ = req[0], req[1]
        kept.append(Fact(f"{p}.request", text[rs:re_], rs, re_, "llm"))
        kept.append(Fact(f"{p}.decision", it.decision, dq[0], dq[1], "llm"))
        cat = lx.categorize(text[rs:re_])
        kept.append(Fact(f"{p}.category", cat[0], rs + cat[1], rs + cat[2], "rules") if cat else Fact(f"{p}.category", "other", rs, re_, "rules"))
        q = lx.quantity(text[rs:re_])
        if q:
            kept.append(Fact(f"{p}.quantity", q[0], rs + q[1], rs + q[2], "rules"))
        for reg, s, e in lx.body_regions(text[rs:re_]):
            kept.append(Fact(f"{p}.body_regions[]", reg, rs + s, rs + e, "rules"))
        n += 1
    flags = [f"model_derived_items: {n} item(s) read by the model from a layout this version does not parse; each request "
             f"and decision sentence was found in the letter"] if n else []
    return kept, dropped, flags


@lru_cache(maxsize=64)
def response_model(n_items: int) -> type[LLMExtraction]:
    """The answer type for a letter with ``n_items`` disputed items (exactly that many).

    Wrapped once with ``instructor.openai_schema`` and cached: handing instructor a plain model
    makes it build a new wrapper class and JSON schema on every call (~20 ms of CPU each).
    """
    from instructor import openai_schema

    return openai_schema(create_model("LLMExtraction", __base__=LLMExtraction, __doc__=LLMExtraction.__doc__,
                                      items=(list[LLMItem], Field(min_length=n_items, max_length=n_items))))


def _prompt_dir():
    """Installed: the package data ``imr_llm.prompts`` (pyproject maps it to ``prompts/``). From a
    checkout (tests, ``python -m``) the top-level ``prompts/`` folder itself, where people edit them."""
    checkout = Path(__file__).resolve().parent.parent / "prompts"
    if (checkout / PROMPT_FILE).is_file() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    from importlib.resources import files

    return files("imr_llm.prompts")


def read_prompt(name: str) -> str:
    """A prompt file from ``prompts/`` without its HTML comments (the version notes)."""
    text = _prompt_dir().joinpath(name).read_text(encoding="utf-8")
    return re.sub(r"<!--.*?-->\s*", "", text, flags=re.DOTALL).strip()


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


_INJECTION = re.compile(
    r"ignore\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier)\s+instructions|disregard\s+(?:\w+\s+){0,3}instructions"
    r"|system\s+prompt|you\s+are\s+now\b|mark\s+(?:every|all)\s+items?|\"\s*\}\s*\]\s*\}|</?(?:tool|function|system)\b|\bassistant\s*:",
    re.IGNORECASE)


_INJECTION_HINTS = ("instruction", "prompt", "you are now", "mark every", "mark all", '"', "</", "assistant")


def letter_id(path: str) -> str:
    return Path(path).stem


def analyse(letter: Letter) -> Layout:
    """Parse and refuse what is not a usable IMR letter (one-line reason)."""
    lay = parse(letter.norm.text)
    if lay.problems:
        raise LetterError(letter.path, lay.problems[0])
    if not lay.items and "unknown_layout" not in lay.features:
        raise LetterError(letter.path, "no disputed items found")
    return lay


def llm_facts(x: LLMExtraction, lay: Layout) -> tuple[list[Fact], list[str]]:
    """Turn the model's answer into located-later facts, plus flags from the decision cross-check."""
    facts: list[Fact] = []
    flags: list[str] = []
    summ = (lay.summary.start, lay.summary.end) if lay.summary else None
    if summ:
        if x.age is not None:
            facts.append(Fact("claimant.age", x.age, origin="llm", quote=x.claimant_quote, within=summ))
        if x.sex is not None:
            facts.append(Fact("claimant.sex", x.sex, origin="llm", quote=x.claimant_quote, within=summ))
        facts += [Fact("diagnoses[]", d, origin="llm", within=summ) for d in x.diagnoses]
        facts += [Fact("prior_treatments[]", t, origin="llm", within=summ) for t in x.prior_treatments]
        facts += [Fact("surgeries[]", s, origin="llm", quote=s.quote, within=summ) for s in x.surgeries]
    by_index = {it.index: it for it in lay.items}
    for li in x.items:
        it = by_index.get(li.index)
        if it is None:
            flags.append(f"llm_extra_item:{li.index}")
            continue
        p, req = f"items[{it.index}]", (it.request.start, it.request.end)
        if li.decision.strip().lower() != it.decision.text.strip().lower():
            flags.append(f"decision_mismatch:{p}: letter says {it.decision.text!r}, model said {li.decision!r}")
        if li.category:
            facts.append(Fact(f"{p}.category", li.category, origin="llm", quote=it.request.text, within=req))
        if li.quantity is not None:
            facts.append(Fact(f"{p}.quantity", li.quantity, origin="llm", quote=it.request.text, within=req))
        if li.frequency:
            facts.append(Fact(f"{p}.frequency", li.frequency, origin="llm", within=req))
        for reg in li.body_regions:
            facts.append(Fact(f"{p}.body_regions[]", reg, origin="llm", quote=it.request.text, within=req))
        if it.rationale:
            rat = (it.rationale.start, it.rationale.end)
            for r in li.denial_reasons:
                facts.append(Fact(f"{p}.denial_reasons[]", r.code, origin="llm", quote=r.quote, within=rat))
    missing = set(by_index) - {li.index for li in x.items}
    if missing:
        flags.append(f"llm_missed_items:{sorted(missing)}")
    return facts, flags


def _add_surgery(asm: Assembler, fact: Fact) -> None:
    s: LLMSurgery = fact.value
    lo, hi = fact.within
    hit = locate(s.quote, asm.text, lo, hi) or locate(s.procedure, asm.text, lo, hi)
    if hit is None:
        asm.drop("surgeries[]", s.procedure, "llm", "quote not found in the letter")
        return
    qs, qe = hit[0], hit[1]
    proc = locate(s.procedure, asm.text, max(lo, qs - 200), min(hi, qe + 200))
    if proc is None:
        asm.drop("surgeries[]", s.procedure, "llm", "procedure not found near its quote")
        return
    if asm._has_equal("surgeries[]", {"procedure": s.procedure}):
        return
    near = asm.text[max(lo, qs - 50):min(hi, qe + 50)]
    val = {"procedure": asm.text[proc[0]:proc[1]], "body_region": None, "level": None, "date": None}
    spans = [(".procedure", proc[0], proc[1], proc[2], proc[3])]
    if s.date:
        iso = next((d for d, _, _ in lx.dates_in(s.date)), None)
        found = next(((d, a, b) for d, a, b in lx.dates_in(near) if d == iso), None) if iso else None
        if found:
            off = max(lo, qs - 50)
            val["date"] = iso
            spans.append((".date", off + found[1], off + found[2], "exact", None))
        else:
            asm.drop("surgeries[].date", s.date, "llm", "date not stated near the surgery")
    if s.level:
        lv = locate(s.level, asm.text, max(lo, qs - 50), min(hi, qe + 50))
        if lv:
            val["level"] = s.level.upper().replace(" ", "")
            spans.append((".level", lv[0], lv[1], lv[2], lv[3]))
    for a, b in ((proc[0], proc[1]), (qs, qe)):  # "L3-L4 lumbar fusion" -> lumbar
        regs = lx.body_regions(asm.text[a:b])
        if regs:
            reg, ra, rb = regs[0]
            val["body_region"] = reg
            spans.append((".body_region", a + ra, a + rb, "exact", None))
            break
    asm.put(Fact("surgeries[]", val, origin="llm"), spans)


MANY_ITEMS = 40  # real letters hold 1-10 disputed items; 12,739 came from a 60 MB file of repeats


def _sanity_flags(d: dict) -> list[str]:
    """Values each valid alone but impossible together, or a letter that looks pasted twice."""
    from datetime import date

    out = []
    dec, doi, ur = d.get("decision_date"), d.get("date_of_injury"), d.get("ur_denial_date")
    if dec and doi and doi > dec:
        out.append(f"date_order: the date of injury {doi} is after the decision date {dec}")
    if dec and ur and ur > dec:
        out.append(f"date_order: the UR denial date {ur} is after the decision date {dec}")
    for name in ("decision_date", "date_assigned", "date_of_injury", "ur_denial_date", "application_received"):
        if d.get(name) and d[name] > date.today().isoformat():
            out.append(f"future_date: {name} {d[name]} is in the future")
    items = d.get("items", [])
    seen: dict[tuple, int] = {}
    for it in items:
        key = (it.get("request", "").lower(), it.get("decision"), (it.get("rationale") or "")[:500])
        if key in seen:
            out.append(f"duplicate_item: items[{it['index']}] repeats items[{seen[key]}] word for word")
        seen.setdefault(key, it["index"])
    if len(items) > MANY_ITEMS:
        out.append(f"many_items: {len(items)} disputed items (letters hold 1 to about 10); check the file is one letter")
    return out


def assemble(letter: Letter, lay: Layout, llm: LLMExtraction | None = None, usage: Usage | None = None,
             extra_flags: list[str] | None = None, free: FreeItems | None = None) -> DecisionRecord:
    asm = Assembler(letter, lay)
    if free is not None:  # an unknown layout: the model's items, each grounded, stand in for the parser's
        kept, dropped, fl = free_item_facts(free, letter.norm.text)
        n = len({f.field.split(".")[0] for f in kept})
        asm.data["items"] = [{"index": i, "request": "", "decision": "", "body_regions": [], "guideline_sources": [],
                              "denial_reasons": []} for i in range(n)]
        for f in kept:
            asm.add_spanned(f)
        for f in dropped:
            asm.drop(f.field, f.value, "llm", "not grounded")
        extra_flags = list(extra_flags or []) + fl
    for f in layout_facts(lay) + rule_facts(lay, letter.norm.text):
        asm.add_spanned(f)
    flags = list(extra_flags or [])
    if llm is not None:
        facts, fl = llm_facts(llm, lay)
        flags += fl
        for f in facts:
            if f.field == "surgeries[]":
                _add_surgery(asm, f)
            else:
                asm.add_proposed(f)
    low = letter.norm.text.lower()
    if any(k in low for k in _INJECTION_HINTS) and _INJECTION.search(letter.norm.text):
        flags.append("prompt_injection_suspected: the letter contains text addressed to a model; decisions come from the layout parser")
    for feat in lay.features:
        if feat.startswith("unusual_outcome:"):
            flags.append(feat)
        elif feat == "unknown_layout":
            flags.append("unknown_layout: an IMR letter in a template this version does not parse; " + (
                "its items were read by the model and kept only where the letter states them" if free is not None
                else "items and decisions were not read (a model, --model, can read them)"))
        elif feat == "no_rationale":
            flags.append("no_rationale: the letter states its decisions without a rationale section")
        elif feat.startswith("impossible_date:"):
            _, name, quote = feat.split(":", 2)
            flags.append(f"impossible_date: {name} {quote!r} is not a calendar date (left empty)")
        elif feat == "no_final_period":
            flags.append("no_final_period: the last rationale ends without a period but states its conclusion; check the letter's end")
    flags += [f"input: {n}" for n in letter.notes] + _sanity_flags(asm.data)
    if any(ev.status == "not_found" for ev in asm.evidence):
        flags.append("ungrounded_values_dropped")
    return asm.record(letter_id=letter_id(letter.path), source_path=letter.path, sha256=letter.sha256,
                      text_sha256=letter.text_sha256, layout=[f for f in lay.features if ":" not in f],
                      usage=usage or Usage(), flags=flags, schema_version=SCHEMA_VERSION)
