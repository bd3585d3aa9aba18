"""A model's answer turned into facts for grounding: each carries where it must be found.

``llm_facts`` reads the answer about a parsed letter (claimant, diagnoses, surgeries, each item);
``free_item_facts`` the items a model listed for a letter in an unknown layout, kept only when the
request and the decision sentence are in the letter and that sentence says that decision.
"""
from __future__ import annotations

import re

from ..core import lexicon as lx
from ..core.ground import locate
from ..core.rules import Fact
from ..core.segment import Layout
from .answers import FreeItems, LLMExtraction
from .surgery import SurgeryClaim


def llm_facts(x: LLMExtraction, lay: Layout) -> tuple[list[Fact], list[SurgeryClaim], list[str]]:
    """The model's answer as facts to locate, surgeries to ground, and flags from the decision cross-check."""
    facts: list[Fact] = []
    surgeries: list[SurgeryClaim] = []
    flags: list[str] = []
    summ = (lay.summary.start, lay.summary.end) if lay.summary else None
    if summ:
        if x.age is not None:
            facts.append(Fact("claimant.age", x.age, origin="llm", quote=x.claimant_quote, within=summ))
        if x.sex is not None:
            facts.append(Fact("claimant.sex", x.sex, origin="llm", quote=x.claimant_quote, within=summ))
        facts += [Fact("diagnoses[]", d, origin="llm", within=summ) for d in x.diagnoses]
        facts += [Fact("prior_treatments[]", t, origin="llm", within=summ) for t in x.prior_treatments]
        surgeries = [SurgeryClaim(s.procedure, s.level, s.date, s.quote, summ) for s in x.surgeries]
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
    return facts, surgeries, flags


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
