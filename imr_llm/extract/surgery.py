"""Surgeries a model read from the summary, grounded: the procedure must be in the letter near its
quote; date, spinal level and body region are kept only where the letter states them there."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..core import lexicon as lx
from ..core.ground import Assembler, locate
from ..core.rules import Fact


@dataclass(frozen=True)
class SurgeryClaim:
    """A surgery as the model proposed it, with the part of the letter it must be found in."""
    procedure: str
    level: Optional[str]
    date: Optional[str]
    quote: str
    within: tuple[int, int]


def ground_surgery(asm: Assembler, s: SurgeryClaim) -> None:
    """Add ``s`` to the record being assembled with a span for each part, or drop it (reported)."""
    lo, hi = s.within
    hit = locate(s.quote, asm.text, lo, hi) or locate(s.procedure, asm.text, lo, hi)
    if hit is None:
        asm.drop("surgeries[]", s.procedure, "llm", "quote not found in the letter")
        return
    qs, qe = hit[0], hit[1]
    proc = locate(s.procedure, asm.text, max(lo, qs - 200), min(hi, qe + 200))
    if proc is None:
        asm.drop("surgeries[]", s.procedure, "llm", "procedure not found near its quote")
        return
    if asm.has_equal("surgeries[]", {"procedure": s.procedure}):
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
