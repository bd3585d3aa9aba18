"""Facts the template states plainly, read deterministically from the parsed layout.

Each ``Fact`` carries its span in the normalised text; ``ground.Assembler`` (driven by
``extract.assemble``) turns facts into the record plus evidence. The LLM layer proposes more facts of the same shape (without spans).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import drugs, dwc, lexicon as lx
from .segment import Layout, Span
from .surgeries import surgeries


@dataclass
class Fact:
    field: str  # "claimant.age", "items[0].quantity"; list fields end with "[]" (append)
    value: Any
    start: int | None = None  # normalised offsets; None = to be located (LLM facts)
    end: int | None = None
    origin: str = "rules"
    quote: str | None = None  # LLM's supporting quote
    within: tuple[int, int] | None = None  # where an LLM quote must be found


def layout_facts(lay: Layout) -> list[Fact]:
    f: list[Fact] = []
    for name, sp in lay.header.items():
        f.append(Fact(name, lay.header_values[name], sp.start, sp.end, "layout"))
    for sp in lay.specialties:
        f.append(Fact("reviewer.specialties[]", sp.text, sp.start, sp.end, "layout"))
        name = dwc.specialty(sp.text)
        if name:
            f.append(Fact("reviewer.dwc_specialties[]", name, sp.start, sp.end, "layout"))
    for sp in lay.license_states:
        f.append(Fact("reviewer.license_states[]", sp.text.title(), sp.start, sp.end, "layout"))
    if lay.summary:
        f.append(Fact("clinical_summary", lay.summary.text, lay.summary.start, lay.summary.end, "layout"))
    for it in lay.items:
        p = f"items[{it.index}]"
        f.append(Fact(f"{p}.request", it.request.text, it.request.start, it.request.end, "layout"))
        for name, sp in (("original_request", it.original), ("authorized", it.authorized)):
            if sp:
                f.append(Fact(f"{p}.{name}", sp.text, sp.start, sp.end, "layout"))
        f.append(Fact(f"{p}.decision", it.outcome or _outcome(it.decision.text), it.decision.start, it.decision.end, "layout"))
        for name, sp in (("claims_administrator_guideline", it.ca_guideline), ("maximus_guideline", it.mx_guideline), ("rationale", it.rationale)):
            if sp:
                f.append(Fact(f"{p}.{name}", sp.text, sp.start, sp.end, "layout"))
    return f


def _category(it) -> tuple[str, int, int] | None:
    """Category of an item: its request words, else the original request's (a partial authorization's
    disputed portion may be "with open carpal tunnel release"), else the section MAXIMUS applied."""
    for sp in (it.request, it.original, it.mx_guideline, it.ca_guideline):
        if sp is None:
            continue
        hit = lx.categorize(sp.text) if sp is it.request or sp is it.original else lx.category_from_guideline(sp.text)
        if hit:
            return hit[0], sp.start + hit[1], sp.start + hit[2]
    return None


def _outcome(word: str) -> str:
    return " ".join(w.capitalize() if i == 0 else w.lower() for i, w in enumerate(word.split()))


def _sub(sp: Span, hit: tuple[Any, int, int] | None) -> tuple[Any, int, int] | None:
    """Shift a (value, start, end) found inside ``sp.text`` to absolute offsets."""
    return None if hit is None else (hit[0], sp.start + hit[1], sp.start + hit[2])


def rule_facts(lay: Layout, text: str) -> list[Fact]:
    f: list[Fact] = []
    for it in lay.items:
        p = f"items[{it.index}]"
        req = it.request
        cat = _category(it)
        f.append(Fact(f"{p}.category", *cat) if cat else Fact(f"{p}.category", "other", req.start, req.end))
        drug = None
        for name, hit in (("quantity", lx.quantity(req.text)), ("frequency", lx.frequency(req.text))):
            h = _sub(req, hit)
            if h:
                f.append(Fact(f"{p}.{name}", h[0], h[1], h[2]))
        if cat and cat[0] == "medication":
            # the disputed portion may name only a count ("Two refills"): the drug is in the original
            for sp in (req, it.original):
                d = sp and drugs.classify(sp.text)
                if d:
                    drug = (d, sp.start + d[3], sp.start + d[4])
                    f.append(Fact(f"{p}.drug", d[0], drug[1], drug[2]))
                    f.append(Fact(f"{p}.drug_class", d[1], drug[1], drug[2]))
                    f.append(Fact(f"{p}.dwc_drug_class", d[2], drug[1], drug[2]))
                    break
        f.extend(_dwc_facts(p, it, cat, drug))
        # a disputed portion that names no region ("Two refills of ...") keeps the original request's
        for sp in (req, it.original):
            regs = lx.body_regions(sp.text) if sp else []
            for reg, s, e in regs:
                f.append(Fact(f"{p}.body_regions[]", reg, sp.start + s, sp.start + e))
            if regs:
                break
        for who, sp in (("claims_administrator", it.ca_guideline), ("maximus", it.mx_guideline)):
            if not sp:
                continue
            for g in lx.guideline_sources(sp.text):
                val = {"name": g["name"], "detail": g["detail"], "pages": g["pages"], "cited_by": who}
                f.append(Fact(f"{p}.guideline_sources[]", val, sp.start + g["start"], sp.start + g["end"]))
        if it.rationale:
            for code, s, e in lx.reasons(it.rationale.text, it.decision.text):
                f.append(Fact(f"{p}.denial_reasons[]", code, it.rationale.start + s, it.rationale.start + e))
    if lay.items:
        outcome = dwc.case_outcome([_outcome(it.outcome or it.decision.text) for it in lay.items])
        if outcome:  # evidence: an overturned item's decision when there is one, else the first decision
            it = next((x for x in lay.items if (x.outcome or x.decision.text).lower() == "overturned"), lay.items[0])
            f.append(Fact("case_outcome", outcome, it.decision.start, it.decision.end))
    if lay.summary:
        f.extend(_summary_facts(lay.summary, "date_of_injury" not in lay.header))
    return f


def _dwc_facts(p: str, it, cat: tuple[str, int, int] | None, drug) -> list[Fact]:
    """DWC's category and subcategory, grounded on the words that chose them (the category's, the
    drug's, or the finer subcategory's)."""
    name = cat[0] if cat else "other"
    got = dwc.classify(name, it.request.text, drug[0][2] if drug else None)
    if not got:
        return []
    dcat, sub, s, e = got
    if s >= 0:
        span = (it.request.start + s, it.request.start + e)
    elif drug:
        span = (drug[1], drug[2])
    elif cat:
        span = (cat[1], cat[2])
    else:
        return []
    out = [Fact(f"{p}.dwc_category", dcat, *span)]
    if sub:
        out.append(Fact(f"{p}.dwc_subcategory", sub, *span))
    return out


# --- clinical case summary -------------------------------------------------------------------------

_DIAG_LIST = re.compile(
    r"(?:current\s+|working\s+|final\s+|the\s+)?diagnos[ie]s\s+(?:include[sd]?|are|were|consist\s+of|listed\s+as)\s*:?\s*(?P<v>[^.]+?)\.(?=\s|$)"
    r"|diagnosed\s+with\s+(?P<v2>[^.]+?)\.(?=\s|$)", re.IGNORECASE)
_CLAIM_FOR = re.compile(r"(?:filed|submitted)\s+a\s+claim\s+for\s+(?P<v>.+?)(?=\s*(?:,\s*)?(?:\s+status\s+post|\s+s/p|\s+reportedly|\s+associated|\s+attributed|\.))", re.IGNORECASE)
_TREAT_LIST = re.compile(
    r"(?:(?:previous|prior|past)\s+treatments?|treatments?\s+to\s+date|treatment\s+history)\s+(?:has\s+|have\s+|had\s+)?(?:include[sd]?|consisted\s+of|to\s+date\s+(?:has\s+)?include[sd]?)\s*:?\s*(?P<v>.+?)\.(?=\s+[A-Z]|[A-Z][a-z]|\s*$|\s*\n)",
    re.IGNORECASE)
_LIST_SPLIT = re.compile(r",(?!\s*\d{4}\b)\s*(?:and\s+|or\s+)?|;\s*(?:and\s+)?")


def _summary_facts(sp: Span, want_doi: bool) -> list[Fact]:
    f: list[Fact] = []
    t, base = sp.text, sp.start
    m = lx.AGE_SEX.search(t)
    if m:
        f.append(Fact("claimant.age", int(m.group("age")), base + m.start("age"), base + m.end()))
        if m.group("sex"):
            f.append(Fact("claimant.sex", lx.SEX_WORDS[m.group("sex").lower()], base + m.start(), base + m.end("sex")))
    if not (m and m.group("sex")):
        s = lx.SEX_ALONE.search(t)
        if s:
            f.append(Fact("claimant.sex", lx.SEX_WORDS[s.group("sex").lower()], base + s.start(), base + s.end()))
    if want_doi:
        for inj in lx.INJURY_DATE.finditer(t):
            if d := lx.date_at(t, inj.end()):
                f.append(Fact("date_of_injury", d[0], base + inj.start(), base + d[2]))
                break
    seen: set[str] = set()
    low = t.lower()
    for rx, key, hint in ((_DIAG_LIST, "diagnoses[]", "diagnos"), (_CLAIM_FOR, "diagnoses[]", "claim for"),
                          (_TREAT_LIST, "prior_treatments[]", "treatment")):
        if hint not in low:
            continue
        for m in rx.finditer(t):
            g = "v" if m.group("v") else "v2"
            for part in _list_parts(m.group(g), m.start(g)):
                txt, s, e = part
                if txt.lower() in seen:
                    continue
                seen.add(txt.lower())
                f.append(Fact(key, txt, base + s, base + e))
    f.extend(Fact("surgeries[]", s) for s in surgeries(t, base))
    return f


def _list_parts(v: str, off: int) -> list[tuple[str, int, int]]:
    parts = []
    pieces = list(_LIST_SPLIT.finditer(v))
    bounds = [(0, pieces[0].start())] if pieces else []
    for a, b in zip(pieces, pieces[1:]):
        bounds.append((a.end(), b.start()))
    if pieces:
        bounds.append((pieces[-1].end(), len(v)))
    else:
        # "A and B" with no commas
        mid = re.search(r"\s+and\s+", v)
        bounds = [(0, mid.start()), (mid.end(), len(v))] if mid and len(v) < 120 else [(0, len(v))]
    for s, e in bounds:
        seg = v[s:e]
        seg2 = seg.strip().rstrip(",;")
        seg2 = re.sub(r"^(?:and|or)\s+", "", seg2)
        if 2 < len(seg2) < 160:
            st = off + v.index(seg2, s)
            parts.append((seg2, st, st + len(seg2)))
    return parts


