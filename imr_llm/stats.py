"""Precedent statistics: exact counts and overturn rates over the indexed items, by group.

Every number is a count over the store's ``items`` table (one row per disputed item), under the
same filters as ``imr ask``. Rates carry a 95% Wilson interval, which stays inside [0, 1] and is
honest for small groups. Single-valued fields group in SQL; list fields (body region, guideline,
denial reason, specialty, licence state) count an item once in each of its values, so their groups
may add up to more than the total: the output says so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from .filters import Filters

# FIELD -> (SQL expression over items, list-valued?)
GROUPS: dict[str, tuple[str, bool]] = {
    "category": ("category", False),
    "drug_class": ("nullif(drug_class, '')", False),
    "dwc_category": ("nullif(dwc_category, '')", False),
    "dwc_subcategory": ("nullif(dwc_subcategory, '')", False),
    "decision": ("decision", False),
    "case_outcome": ("nullif(case_outcome, '')", False),
    "decision_year": ("substr(nullif(decision_date, ''), 1, 4)", False),
    "decision_month": ("substr(nullif(decision_date, ''), 1, 7)", False),
    "partial_authorization": ("CASE WHEN partial THEN 'yes' ELSE 'no' END", False),
    "after_surgery": ("CASE WHEN had_surgery THEN 'yes' ELSE 'no' END", False),
    "fusion": ("CASE WHEN had_fusion THEN 'yes' ELSE 'no' END", False),
    "body_region": ("regions", True),
    "reviewer_specialty": ("specialties", True),
    "dwc_specialty": ("dwc_specialties", True),
    "license_state": ("license_states", True),
    "guideline_source": ("guidelines", True),
    "denial_reason": ("denial_reasons", True),
}
THIN = 10  # fewer items than this: the rate is shown with a warning, not as a finding


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)


@dataclass
class Cell:
    items: int = 0
    letters: set = field(default_factory=set)
    outcomes: dict = field(default_factory=lambda: defaultdict(int))
    examples: list = field(default_factory=list)  # (letter_id, cite_id, item) of a few items

    def add(self, lid: str, cite: str, item: int, decision: str) -> None:
        self.items += 1
        self.letters.add(lid)
        self.outcomes[decision or "unknown"] += 1
        if len(self.examples) < 3 and not any(e[0] == lid for e in self.examples):
            self.examples.append((lid, cite, item))

    def to_dict(self) -> dict:
        up, over = self.outcomes.get("Upheld", 0), self.outcomes.get("Overturned", 0)
        d = {"items": self.items, "letters": len(self.letters), "upheld": up, "overturned": over}
        other = {k: v for k, v in self.outcomes.items() if k not in ("Upheld", "Overturned")}
        if other:
            d["other_outcomes"] = dict(other)
        d["overturn_rate"] = round(over / self.items, 4) if self.items else None
        d["ci95"] = wilson(over, self.items)
        d["thin"] = self.items < THIN
        d["cited"] = [f"[{c} #{i + 1}]" for _, c, i in self.examples]
        d["cited_letters"] = [lid for lid, _, _ in self.examples]
        return d


def compute(db, by: list[str], f: Filters | None = None) -> dict:
    """Totals and groups. ``db``: the index store's connection."""
    for b in by:
        if b not in GROUPS:
            raise ValueError(f"--by {b!r}: use one of {', '.join(GROUPS)}")
    f = (f or Filters()).without("kind")
    where, args = f.sql()
    exprs = [GROUPS[b][0] for b in by]
    cols = ", ".join(["letter_id", "cite_id", "item", "decision"] + exprs)
    rows = db.execute(f"SELECT {cols} FROM items WHERE {where} ORDER BY letter_id, item", args).fetchall()
    total = Cell()
    groups: dict[tuple, Cell] = {}
    for r in rows:
        lid, cite, item, dec = r[:4]
        total.add(lid, cite, item, dec)
        keys: list[tuple] = [()]
        for b, v in zip(by, r[4:]):
            vals = [x for x in (v or "").strip("|").split("|") if x] if GROUPS[b][1] else [v]
            vals = vals or [None]
            keys = [k + (x,) for k in keys for x in vals]
        for k in keys:
            groups.setdefault(k, Cell()).add(lid, cite, item, dec)
    out_groups = [{"key": dict(zip(by, k)), **c.to_dict()} for k, c in groups.items()]
    out_groups.sort(key=lambda g: (-g["items"], str(g["key"])))
    listy = [b for b in by if GROUPS[b][1]]
    return {"filters": f.to_dict(), "by": by, "total": total.to_dict(), "groups": out_groups,
            "note": (f"an item with several values of {', '.join(listy)} counts in each of them, so groups add up to more "
                     f"than the total" if listy else "groups add up to the total")}
