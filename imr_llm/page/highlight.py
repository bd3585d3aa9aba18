"""The letter view shared by the page (`imr serve`) and the eval report: the letter's exact text cut
at every evidence span, each piece with the innermost value covering it and a colour per kind."""
from __future__ import annotations

import html

# evidence field -> colour class (one per kind of value)
KINDS = [("decision", "k-decision"), ("request", "k-request"), ("original_request", "k-request"), ("authorized", "k-request"),
         ("category", "k-category"), ("dwc_", "k-category"), ("drug", "k-drug"), ("quantity", "k-quantity"),
         ("frequency", "k-quantity"), ("body_region", "k-region"), ("guideline", "k-guideline"), ("denial_reasons", "k-reason"),
         ("date", "k-date"), ("application_received", "k-date"), ("case_number", "k-header"), ("priority", "k-header"),
         ("reviewer", "k-reviewer"), ("claimant", "k-claimant"), ("diagnoses", "k-clinical"), ("surgeries", "k-clinical"),
         ("prior_treatments", "k-clinical"), ("case_outcome", "k-decision")]
# one colour per kind of value, for the page (static/imr.css) and the self-contained eval report
CSS = (".k-decision{background:#ffc9de}.k-request{background:#ffe08a}.k-category{background:#c8f2c2}.k-drug{background:#e0d4ff}"
       ".k-quantity{background:#b5e3ff}.k-region{background:#ffd8b0}.k-guideline{background:#d7f0ee}.k-reason{background:#f6d6d6}"
       ".k-date,.k-header{background:#e8e8e8}.k-reviewer,.k-claimant,.k-clinical,.k-other{background:#f0ecd8}")


def kind_of(field: str) -> str:
    leaf = field.split(".")[-1].split("[")[0]
    top = field.split(".")[0].split("[")[0]
    if "date" in leaf:
        return "k-date"
    for key, cls in KINDS:
        if leaf.startswith(key) or top.startswith(key):
            return cls
    return "k-other"


def letter_segments(text: str, evidence: list[dict]) -> list[dict]:
    """The text cut where evidence spans start and end; each piece with its offset and the
    innermost value covering it (rationales and summaries are too long to colour)."""
    spans = [(i, e) for i, e in enumerate(evidence) if e.get("status") != "not_found" and e.get("start") is not None
             and not e["field"].endswith(("rationale", "clinical_summary"))]
    bounds = sorted({0, len(text)} | {e["start"] for _, e in spans} | {e["end"] for _, e in spans})
    segs = []
    for a, b in zip(bounds, bounds[1:]):
        cover = [(i, e) for i, e in spans if e["start"] <= a and e["end"] >= b]
        seg = {"start": a, "text": text[a:b]}
        if cover:
            i, e = min(cover, key=lambda x: x[1]["end"] - x[1]["start"])
            seg.update(ev=i, cls=kind_of(e["field"]), title=e["field"], first=e["start"] == a)
        segs.append(seg)
    return segs


def to_html(text: str, evidence: list[dict]) -> str:
    """The letter as escaped HTML with <mark class="k-..."> around each value (for static reports)."""
    out = []
    for s in letter_segments(text, evidence):
        t = html.escape(s["text"])
        out.append(f'<mark class="{s["cls"]}" title="{html.escape(s["title"])}">{t}</mark>' if s.get("cls") else t)
    return "".join(out)
