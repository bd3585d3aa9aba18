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

import numpy as np
from dataclasses import dataclass, field

from ..core.filters import Filters

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


MAX_BY = 3


def compute(store, by: list[str], f: Filters | None = None, facets: dict | None = None) -> dict:
    """Totals and groups. ``store``: the index's ``Store``; ``facets``: its ``items.npz``
    columns, when present (then the work is NumPy over codes: ~100x faster at a million items)."""
    for b in by:
        if b not in GROUPS:
            raise ValueError(f"--by {b!r}: use one of {', '.join(GROUPS)}")
    if len(set(by)) != len(by) or len(by) > MAX_BY:  # list fields multiply: 11 of them took 3 s and 43 MB on 5 letters
        raise ValueError(f"--by {' '.join(by)}: group by up to {MAX_BY} different fields")
    f = (f or Filters()).without("kind")
    if facets is not None and sum(GROUPS[b][1] for b in by) <= 1:
        return _compute_columns(facets, by, f)
    exprs = [GROUPS[b][0] for b in by]
    rows = store.select_items(f, ", ".join(["letter_id", "cite_id", "item", "decision"] + exprs), order=store.ITEM_ORDER)
    total = Cell()
    groups: dict[tuple, Cell] = {}
    for r in rows:
        lid, cite, item, dec = r[:4]
        total.add(lid, cite, item, dec)
        keys: list[tuple] = [()]
        for b, v in zip(by, r[4:]):
            vals = list(dict.fromkeys(x for x in (v or "").strip("|").split("|") if x)) if GROUPS[b][1] else [v]
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


# --- the same over the columnar mirror ---------------------------------------------------------------

_DERIVED = {"decision_year": ("decision_date", lambda v: v[:4] or None), "decision_month": ("decision_date", lambda v: v[:7] or None),
            "partial_authorization": ("partial", lambda v: "yes" if v not in ("", "0") else "no"),
            "after_surgery": ("had_surgery", lambda v: "yes" if v not in ("", "0") else "no"),
            "fusion": ("had_fusion", lambda v: "yes" if v not in ("", "0") else "no")}
_COLUMN = {"category": "category", "drug_class": "drug_class", "dwc_category": "dwc_category", "dwc_subcategory": "dwc_subcategory",
           "decision": "decision", "case_outcome": "case_outcome", "body_region": "regions", "reviewer_specialty": "specialties",
           "dwc_specialty": "dwc_specialties", "license_state": "license_states", "guideline_source": "guidelines",
           "denial_reason": "denial_reasons"}


def _field_codes(fz: dict, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """(row positions, value codes, value names) of one grouping field over the selected rows;
    a list-valued field gives one pair per value of each row."""
    col, fn = _DERIVED.get(name, (_COLUMN.get(name), None))
    vocab = [str(v) for v in fz[f"{col}__vocab"]]
    codes = fz[col][rows]
    if not GROUPS[name][1]:
        mapped = [fn(v) if fn else (v or None) for v in vocab]
        names = sorted({m for m in mapped if m is not None}, key=str) + ([None] if None in mapped else [])
        pos = {n: i for i, n in enumerate(names)}
        lut = np.array([pos[m] for m in mapped], dtype=np.int64)
        return np.arange(len(rows)), lut[codes], names
    parts = [[x for x in v.strip("|").split("|") if x] for v in vocab]
    names = sorted({x for p in parts for x in p}) + ([None] if any(not p for p in parts) else [])
    rs, vs = [], []
    for i, n in enumerate(names):
        has = np.array([(n in p) if n is not None else not p for p in parts], dtype=bool)
        r = np.flatnonzero(has[codes])
        rs.append(r)
        vs.append(np.full(len(r), i, dtype=np.int64))
    return np.concatenate(rs) if rs else np.zeros(0, np.int64), np.concatenate(vs) if vs else np.zeros(0, np.int64), names


class _Selection:
    """The columns of the selected items (positions in page order, newest first)."""

    def __init__(self, fz: dict, sel: np.ndarray):
        self.dvocab = [str(v) for v in fz["decision__vocab"]]
        self.dec = fz["decision"][sel]
        self.lid, self.cite, self.item = fz["letter_id"][sel], fz["cite_id"][sel], fz["item"][sel]
        self.lvocab, self.cvocab, self.ivocab = fz["letter_id__vocab"], fz["cite_id__vocab"], fz["item__vocab"]

    def cells(self, rows: np.ndarray, gcode: np.ndarray, n_groups: int) -> list[dict]:
        """One cell per group code: items, letters, outcomes and the first three letters (newest first)."""
        items = np.bincount(gcode, minlength=n_groups)
        per_dec = {d: np.bincount(gcode[self.dec[rows] == i], minlength=n_groups) for i, d in enumerate(self.dvocab)}
        nl = len(self.lvocab)
        uniq, first = np.unique(gcode * nl + self.lid[rows], return_index=True)
        letters = np.bincount(uniq // nl, minlength=n_groups)
        grp = uniq // nl
        order = np.lexsort((first, grp))  # by group, then first appearance (newest first)
        starts = np.searchsorted(grp[order], np.arange(n_groups))
        out = []
        for g in range(n_groups):
            c = Cell()
            c.items = int(items[g])
            c.letters = set(range(int(letters[g])))
            for d, arr in per_dec.items():
                if arr[g]:
                    c.outcomes[d or "unknown"] += int(arr[g])
            for k in order[starts[g]:starts[g] + 3]:
                if grp[k] != g:
                    break
                r = rows[first[k]]
                c.examples.append((str(self.lvocab[self.lid[r]]), str(self.cvocab[self.cite[r]]), int(self.ivocab[self.item[r]])))
            out.append(c.to_dict())
        return out


def _group_codes(fz: dict, by: list[str], sel: np.ndarray):
    """(rows within the selection, a group code per row, [(field, its value names)]): a list-valued
    field (at most one) expands an item into one row per value."""
    rows, key, names_list = None, None, []
    for name in sorted(by, key=lambda b: not GROUPS[b][1]):  # the list-valued field first
        if rows is None:
            rows, codes, names = _field_codes(fz, name, sel)
            rows, key = rows.astype(np.int64), codes
        else:
            _, codes, names = _field_codes(fz, name, sel[rows])
            key = key * len(names) + codes
        names_list.append((name, names))
    return rows, key, names_list


def _compute_columns(fz: dict, by: list[str], f: Filters) -> dict:
    sel = np.flatnonzero(f.facet_mask(fz))  # positions in page order (newest first)
    cols = _Selection(fz, sel)
    total = cols.cells(np.arange(len(sel)), np.zeros(len(sel), dtype=np.int64), 1)[0]
    groups: list[dict] = [] if by or not len(sel) else [{"key": {}, **total}]
    if by:
        rows, key, names_list = _group_codes(fz, by, sel)
        used = np.unique(key)
        remap = np.full(int(np.prod([len(n) for _, n in names_list])), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        for code, cell in zip(used, cols.cells(rows, remap[key], len(used))):
            parts, c = {}, int(code)
            for name, names in reversed(names_list):
                parts[name] = names[c % len(names)]
                c //= len(names)
            groups.append({"key": {b: parts[b] for b in by}, **cell})
        groups.sort(key=lambda g: (-g["items"], str(g["key"])))
    listy = [b for b in by if GROUPS[b][1]]
    return {"filters": f.to_dict(), "by": by, "total": total, "groups": groups,
            "note": (f"an item with several values of {', '.join(listy)} counts in each of them, so groups add up to more "
                     f"than the total" if listy else "groups add up to the total")}


def load_facets(index_dir) -> dict | None:
    """``items.npz`` of an index folder, or None (then ``compute`` counts in SQL)."""
    from ..index import load_items

    return load_items(index_dir)


def facet_counts(fz: dict, f: Filters, columns: dict[str, tuple[str, str | None]]) -> tuple[int, int, dict[str, dict[str, int]]]:
    """(items, letters, {facet: {value: items}}) of the selection, for the page. ``columns``: facet ->
    (items column, derive) where derive is "year" (first four characters), "yesno" or None."""
    mask = f.facet_mask(fz)
    everything = bool(mask.all())  # the unfiltered page: no copy of a million codes per facet

    def codes(col: str) -> np.ndarray:
        return fz[col] if everything else fz[col][mask]

    letters = int(np.count_nonzero(np.bincount(codes("letter_id"), minlength=len(fz["letter_id__vocab"]))))
    out: dict[str, dict[str, int]] = {}
    for name, (col, derive) in columns.items():
        vocab = [str(v) for v in fz[f"{col}__vocab"]]
        n = np.bincount(codes(col), minlength=len(vocab))
        counts: dict[str, int] = {}
        for v, k in zip(vocab, n):
            if not k:
                continue
            vals = ([v[:4]] if derive == "year" else ["yes" if v not in ("", "0") else "no"] if derive == "yesno"
                    else [x for x in v.strip("|").split("|") if x] if v.startswith("|") else [v])
            for x in vals:
                if x:
                    counts[x] = counts.get(x, 0) + int(k)
        out[name] = counts
    return int(np.count_nonzero(mask)), letters, out


def page_rowids(fz: dict, f: Filters, offset: int, limit: int) -> list[int]:
    """Rowids of the selection's items ``offset:offset+limit`` in the page's order (newest first)."""
    sel = np.flatnonzero(f.facet_mask(fz))[offset:offset + limit]
    return [int(x) for x in fz["rowid"][sel]]


def stats_for(idx, query: str | None, by: list[str], filter_: str | None, facets: dict | None = None) -> dict:
    """`imr stats`'s result over ``idx`` (also what `imr serve`'s /api/stats answers, with the
    ``facets`` it keeps loaded)."""
    from ..core.question import read
    from .answer import MAX_QUESTION

    if query and len(query) > MAX_QUESTION:
        raise ValueError(f"the query is {len(query):,} characters; give it in at most {MAX_QUESTION:,}")

    f = Filters()
    unused: list[str] = []
    if query:
        r = read(query, idx.latest_decision())
        f, unused = r.filters, r.unused
    f = f.merged(Filters.parse(filter_))
    res = compute(idx.store, by, f, facets if facets is not None else load_facets(idx.dir))
    if unused:
        res["unused_words"] = unused
    return res
