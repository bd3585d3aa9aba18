"""Evidence: locate every value in the letter, drop what cannot be found, assemble the record.

Layout and rule facts arrive with their span. LLM facts arrive with a value and a supporting quote;
the quote is located (exact, then fuzzy) inside the part of the letter it must come from, and the
value must be consistent with the quote (an age must appear in it, a sex word must be there...).
What fails is dropped from the record and listed as ``not_found`` evidence with the proposed value.
"""
from __future__ import annotations

import re
from typing import Any

from rapidfuzz import fuzz

from . import lexicon as lx
from .load import Letter
from .models import DecisionRecord, Evidence
from .rules import Fact
from .segment import Layout

FUZZY_MIN = float(90)
_WS = re.compile(r"\s+")


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip().lower()


def locate(needle: str, text: str, lo: int = 0, hi: int | None = None) -> tuple[int, int, str, float] | None:
    """Find ``needle`` in ``text[lo:hi]``: exact (case/space-insensitive), else fuzzy >= FUZZY_MIN."""
    hi = len(text) if hi is None else hi
    n = _norm(needle).strip(" .,;:\"'")
    if len(n) < 2:
        return None
    hay = text[lo:hi]
    pat = r"\s+".join(re.escape(w) for w in n.split(" "))
    m = re.search(pat, hay, re.IGNORECASE)
    if m:
        return lo + m.start(), lo + m.end(), "exact", 100.0
    if len(n) < 8:
        return None
    r = fuzz.partial_ratio_alignment(n, hay.lower(), score_cutoff=FUZZY_MIN)
    if r is None:
        return None
    return lo + r.dest_start, lo + r.dest_end, "fuzzy", round(r.score, 1)


def _number_in(n: int, text: str) -> re.Match | None:
    words = [w for w, v in lx.NUMBER_WORDS.items() if v == n]
    alts = [str(n)] + [re.escape(w) for w in words]
    return re.search(r"(?<![\d.])(?:" + "|".join(alts) + r")(?![\d])", text, re.IGNORECASE)


def _consistent(field: str, value: Any, quote_text: str) -> bool:
    """Is ``value`` actually stated by the located quote?"""
    leaf = re.sub(r"\[\d*\]", "", field).split(".")[-1]
    if leaf == "age":
        return bool(re.search(rf"(?<!\d){int(value)}[- ](?:year|yr)", quote_text, re.IGNORECASE))
    if leaf == "sex":
        words = [w for w, s in lx.SEX_WORDS.items() if s == value]
        return bool(re.search(r"\b(?:" + "|".join(words) + r")\b", quote_text, re.IGNORECASE))
    if leaf == "quantity":
        return _number_in(int(value), quote_text) is not None
    if leaf in ("date", "date_of_injury"):
        return any(d == value for d, _, _ in lx.dates_in(quote_text))
    if leaf == "body_regions" or leaf == "body_region":
        return lx.region_supported(value, quote_text)
    return True


class Assembler:
    """Collects grounded facts into a record dict plus evidence."""

    def __init__(self, letter: Letter, layout: Layout):
        self.letter, self.layout = letter, layout
        self.text = letter.norm.text
        self.data: dict[str, Any] = {"reviewer": {"specialties": [], "license_states": []}, "claimant": {},
                                     "diagnoses": [], "surgeries": [], "prior_treatments": [],
                                     "items": [{"index": it.index, "request": "", "decision": "", "body_regions": [],
                                                "guideline_sources": [], "denial_reasons": []} for it in layout.items]}
        self.evidence: list[Evidence] = []
        self.flags: list[str] = []
        self._origin: dict[str, str] = {}

    # -- evidence helpers
    def _ev(self, field: str, s: int, e: int, status: str, origin: str, score: float | None = None) -> Evidence:
        os_, oe = self.letter.norm.span_to_orig(s, e)
        return Evidence(field=field, start=os_, end=oe, quote=self.letter.text[os_:oe], status=status,
                        origin=origin, score=score if status == "fuzzy" else None)

    def drop(self, field: str, value: Any, origin: str, why: str) -> None:
        self.evidence.append(Evidence(field=field, status="not_found", origin=origin, value=f"{value!r} ({why})"))

    # -- paths
    def _container(self, path: str) -> tuple[Any, str]:
        parts = path.split(".")
        cur: Any = self.data
        for p in parts[:-1]:
            m = re.fullmatch(r"(\w+)\[(\d+)\]", p)
            cur = cur[m.group(1)][int(m.group(2))] if m else cur.setdefault(p, {})
        return cur, parts[-1]

    def get(self, path: str) -> Any:
        cont, leaf = self._container(path.rstrip("[]"))
        return cont.get(leaf)

    def put(self, fact: Fact, spans: list[tuple[str, int, int, str, float | None]]) -> None:
        """Store a located fact; ``spans`` = (field suffix, start, end, status, score)."""
        cont, leaf = self._container(fact.field)
        if leaf.endswith("[]"):
            lst = cont.setdefault(leaf[:-2], [])
            base = f"{fact.field[:-2]}[{len(lst)}]"
            lst.append(fact.value)
        else:
            base = fact.field
            cont[leaf] = fact.value
        self._origin[base] = fact.origin
        for suffix, s, e, status, score in spans:
            self.evidence.append(self._ev(base + suffix, s, e, status, fact.origin, score))

    # -- facts with known spans
    def add_spanned(self, fact: Fact) -> None:
        if fact.field == "surgeries[]":
            val, spans = fact.value["value"], fact.value["spans"]
            fact = Fact(fact.field, val, origin=fact.origin)
            self.put(fact, [(f".{k}", s, e, "exact", None) for k, v in spans.items() if v for s, e in [v]])
            return
        self.put(fact, [("", fact.start, fact.end, "exact", None)])

    # -- LLM facts: locate, check, merge
    def add_proposed(self, fact: Fact) -> None:
        lo, hi = fact.within or (0, len(self.text))
        value = fact.value
        if value is None or value == [] or value == "":
            return
        is_list = fact.field.endswith("[]")
        if is_list and self.has_equal(fact.field, value):
            return
        quote = fact.quote if fact.quote else (value if isinstance(value, str) else None)
        if quote is None:
            self.drop(fact.field, value, "llm", "no supporting quote")
            return
        hit = locate(quote, self.text, lo, hi)
        if hit is None:
            self.drop(fact.field, value, "llm", "quote not found in the letter")
            return
        s, e, status, score = hit
        if not _consistent(fact.field, value, self.text[s:e]):
            self.drop(fact.field, value, "llm", f"not stated by the quoted text {self.text[s:e][:60]!r}")
            return
        if isinstance(value, str) and fact.quote is None and status == "fuzzy":
            # a verbatim field the model paraphrased: keep the letter's words, not the model's
            value = self.text[s:e]
            fact = Fact(fact.field, value, origin=fact.origin, within=fact.within)
            if is_list and self.has_equal(fact.field, value):
                return
        if not is_list:
            current = self.get(fact.field)
            if current is not None and current != value:
                # The deterministic reading stands: the model completes, it does not overrule (measured:
                # the 0.5B model "corrected" 12 visits to 2 because "two" is in the request line).
                # Only a weak rule value (category "other") gives way to a grounded model value.
                if not (fact.field.endswith(".category") and current == "other"):
                    self.flags.append(f"llm_disagrees:{fact.field}: letter/rules say {current!r}, model said {value!r}")
                    return
                self.flags.append(f"llm_completed:{fact.field}: rules read {current!r}, model read {value!r}")
                self.evidence = [ev for ev in self.evidence if ev.field != fact.field]
            elif current == value:
                return  # agreement; the rule evidence stands
        self.put(fact, [("", s, e, status, score)])

    def has_equal(self, field: str, value: Any) -> bool:
        lst = self.get(field) or []
        key = _norm(str(value.get("procedure") if isinstance(value, dict) and "procedure" in value else value))
        for v in lst:
            other = _norm(str(v.get("procedure") if isinstance(v, dict) and "procedure" in v else v))
            if other == key or (len(key) > 6 and (key in other or other in key)):
                return True
        return False

    def record(self, **meta: Any) -> DecisionRecord:
        d = dict(self.data)
        d.update(meta)
        d["evidence"] = self.evidence
        d["flags"] = list(dict.fromkeys(self.flags + meta.get("flags", [])))
        return DecisionRecord.model_validate(d)


def check_evidence(rec: DecisionRecord, text: str) -> list[str]:
    """Every found evidence quote must equal the text at its offsets (used by tests and eval)."""
    bad = []
    for ev in rec.evidence:
        if ev.status != "not_found" and text[ev.start:ev.end] != ev.quote:
            bad.append(ev.field)
    return bad


_META = {"schema_version", "letter_id", "source_path", "sha256", "text_sha256", "layout", "flags", "usage", "evidence"}


def leaf_values(rec: DecisionRecord) -> list[tuple[str, Any]]:
    """(path, value) of every non-empty extracted value, e.g. ("items[0].body_regions[1]", "lumbar")."""
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if v is None or v == [] or v == {}:
            return
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "index" and prefix.startswith("items["):
                    continue
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(f"{prefix}[{i}]", x)
        else:
            out.append((prefix, v))

    walk("", rec.model_dump(mode="json", exclude=_META))
    return out


def ungrounded_values(rec: DecisionRecord) -> list[str]:
    """Paths of values without found evidence (on themselves or a parent): must be empty."""
    found = {e.field for e in rec.evidence if e.status != "not_found"}
    bad = []
    for path, _ in leaf_values(rec):
        p = path
        while p and p not in found:
            p = p.rsplit(".", 1)[0] if "." in p else ""
        if not p:
            bad.append(path)
    return bad
