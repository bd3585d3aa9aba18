"""`imr precedent`: how often were requests like this one overturned, on what grounds, in which letters.

The request is read the way a letter's item is read (category, drug and class, quantity, body
regions), the past disputed items that match it are counted exactly (structured match; relaxed one
step at a time when too few match, and the answer says which), and the closest letters are found
by meaning among them, each with the sentence that carries its decision, cited by offsets.
"""
from __future__ import annotations

from ..core import drugs
from ..core import lexicon as lx
from ..core.filters import Cond, Filters
from .stats import compute, load_facets

ENOUGH = 10  # fewer matching items than this: relax the match, and say the evidence is thin


def read_request(text: str) -> dict:
    """The request as an item: category, drug and class, quantity, regions (spans not needed here)."""
    cat = lx.categorize(text)
    d = drugs.classify(text)
    q = lx.quantity(text)
    return {"request": text, "category": cat[0] if cat else "other", "drug": d[0] if d else None,
            "drug_class": d[1] if d and (cat and cat[0] == "medication") else None, "quantity": q[0] if q else None,
            "body_regions": [r for r, _, _ in lx.body_regions(text)]}


def find(index, request: str, after_surgery: bool = False, fusion: bool = False, regions: list[str] | None = None,
         k: int = 5, retriever=None) -> dict:
    from .answer import best_sentences
    from .retrieve import Retriever

    item = read_request(request)
    if regions:
        item["body_regions"] = regions
    steps = []
    base = [Cond("category", (item["category"],))] if item["category"] != "other" else []
    if fusion:
        base.append(Cond("fusion"))
    elif after_surgery:
        base.append(Cond("after_surgery"))
    extra = []
    if item["drug_class"]:
        extra.append(Cond("drug_class", (item["drug_class"],)))
    if item["body_regions"]:
        extra.append(Cond("region", tuple(item["body_regions"])))
    facets = load_facets(index.dir)
    # structured match, relaxed one condition at a time (regions first, then the drug class)
    tries = [extra, [c for c in extra if c.field != "region"], []]
    tries = [t for i, t in enumerate(tries) if t not in tries[:i]]
    for conds in tries:
        f = Filters(base + conds)
        res = compute(index.store, [], f, facets)
        steps.append({"filters": f.describe(), "items": res["total"]["items"]})
        if res["total"]["items"] >= ENOUGH or conds == []:
            break
    t = res["total"]
    reasons = compute(index.store, ["denial_reason"], Filters(f.conds + [Cond("decision", ("Upheld",))]), facets)["groups"]
    guides = compute(index.store, ["guideline_source"], f, facets)["groups"]
    hits = (retriever or Retriever(index)).search(request, k=k, filters=f)
    precedents = []
    for h in hits:
        row = h.row
        if row["item"] < 0:
            continue
        sents = best_sentences(f"why was {request} {row.get('decision', '')}", row, n=1)
        s, e, quote = sents[0] if sents else (row["start"], row["start"], "")
        precedents.append({"letter_id": row["letter_id"], "case_number": row["cite_id"], "item": row["item"] + 1,
                           "request": row["request"], "category": row["category"], "decision": row["decision"],
                           "quote": quote, "start": s, "end": e, "source_path": row["source_path"]})
    ci = t["ci95"]
    thin = t["items"] < ENOUGH or (ci is not None and ci[1] - ci[0] > 0.3)
    return {"request": item, "matched_on": f.describe(), "relaxed": steps[:-1], "matches": t["items"], "letters": t["letters"],
            "overturned": t["overturned"], "upheld": t["upheld"], "overturn_rate": t["overturn_rate"], "ci95": ci,
            "thin": thin, "reasons": [{"reason": g["key"]["denial_reason"], "items": g["items"]} for g in reasons
                                      if g["key"]["denial_reason"]][:8],
            "guidelines": [{"guideline": g["key"]["guideline_source"], "items": g["items"]} for g in guides
                           if g["key"]["guideline_source"]][:8],
            "precedents": precedents}
