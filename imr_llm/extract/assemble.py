"""One letter to one grounded ``DecisionRecord``: layout parse, rules, the model's facts, grounding,
flags. The model's answer is optional; every value it proposes is located in the letter or dropped."""
from __future__ import annotations

from pathlib import Path

from ..core.ground import Assembler
from ..core.load import Letter, LetterError
from ..core.models import SCHEMA_VERSION, DecisionRecord, Usage
from ..core.rules import layout_facts, rule_facts
from ..core.segment import Layout, parse
from .answers import FreeItems, LLMExtraction
from .facts import free_item_facts, llm_facts
from .injection import injection_flag
from .surgery import ground_surgery


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
        facts, surgeries, fl = llm_facts(llm, lay)
        flags += fl
        # the order of the evidence as before: summary facts, surgeries, then each item's
        for f in (f for f in facts if not f.field.startswith("items[")):
            asm.add_proposed(f)
        for sg in surgeries:
            ground_surgery(asm, sg)
        for f in (f for f in facts if f.field.startswith("items[")):
            asm.add_proposed(f)
    if inj := injection_flag(letter.norm.text):
        flags.append(inj)
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
            kept = asm.data.get(name)  # the letter may state the date again, readably ("injury on 10-14-2016")
            flags.append(f"impossible_date: {name} {quote!r} is not a calendar date " +
                         (f"(the letter's other statement of it is kept: {kept})" if kept else "(left empty)"))
        elif feat == "no_final_period":
            flags.append("no_final_period: the last rationale ends without a period but states its conclusion; check the letter's end")
    flags += [f"input: {n}" for n in letter.notes] + _sanity_flags(asm.data)
    if any(ev.status == "not_found" for ev in asm.evidence):
        flags.append("ungrounded_values_dropped")
    return asm.record(letter_id=letter_id(letter.path), source_path=letter.path, sha256=letter.sha256,
                      text_sha256=letter.text_sha256, layout=[f for f in lay.features if ":" not in f],
                      usage=usage or Usage(), flags=flags, schema_version=SCHEMA_VERSION)
