"""Eval suites: extraction against hand-checked gold records, and question answering.

A suite is a folder with ``letters/`` (.txt/.pdf), ``gold/<letter_id>.json`` and optionally
``questions.jsonl``. Field lists come from the gold files, which follow the record schema.
"""
from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.models import DecisionRecord

SCALARS = ["case_number", "date_assigned", "date_of_injury", "decision_date", "ur_denial_date", "application_received",
           "priority", "claimant.age", "claimant.sex"]
SETS = ["reviewer.specialties", "reviewer.license_states", "diagnoses", "prior_treatments", "surgeries"]
ITEM_SCALARS = ["request", "original_request", "authorized", "decision", "category", "drug", "drug_class", "quantity", "frequency"]
ITEM_SETS = ["body_regions", "guideline_sources", "denial_reasons"]
FIELDS = SCALARS + SETS + [f"items.{f}" for f in ITEM_SCALARS + ITEM_SETS] + ["items.partial_recognised"]
# Reported apart: real letters are the truth; synthetic ones (written by our own generator) widen coverage.
GROUPS = ("real", "synthetic")


def group_of(gold: dict) -> str:
    return "synthetic" if gold.get("synthetic", True) else "real"


def _n(v: Any) -> Any:
    """Normalise for comparison: text lower-cased, whitespace folded, edge punctuation stripped."""
    if isinstance(v, str):
        return re.sub(r"\s+", " ", v).strip(" .,;:").lower()
    return v


def _get(d: dict, path: str) -> Any:
    for p in path.split("."):
        d = (d or {}).get(p)
    return d


def _surgery_keys(lst: list[dict]) -> set:
    return {(s.get("date") or "", s.get("body_region") or "") for s in lst or []}


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, o: "Counts") -> None:
        self.tp, self.fp, self.fn = self.tp + o.tp, self.fp + o.fp, self.fn + o.fn

    def prf(self) -> dict:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def _scalar(g: Any, p: Any) -> Counts:
    g, p = _n(g), _n(p)
    if g is None and p is None:
        return Counts()
    if g == p:
        return Counts(tp=1)
    return Counts(fp=int(p is not None), fn=int(g is not None))


def _set(g: set, p: set) -> Counts:
    return Counts(tp=len(g & p), fp=len(p - g), fn=len(g - p))


def compare(rec: dict, gold: dict) -> tuple[dict[str, Counts], list[dict], tuple[int, int]]:
    """Per-field counts, mismatches and (correct decisions, gold items) for one letter."""
    out: dict[str, Counts] = {}
    mism: list[dict] = []
    lid = gold.get("letter_id") or rec.get("letter_id")

    def note(fieldname: str, c: Counts, exp: Any, got: Any) -> None:
        out.setdefault(fieldname, Counts()).add(c)
        if c.fp or c.fn:  # for sets: expected = missing values, got = extra values
            mism.append({"letter": lid, "field": fieldname, "expected": exp, "got": got})

    for f in SCALARS:
        if f.split(".")[0] in gold:
            note(f, _scalar(_get(gold, f), _get(rec, f)), _get(gold, f), _get(rec, f))
    for f in SETS:
        if f.split(".")[0] not in gold:
            continue
        if f == "surgeries":
            g, p = _surgery_keys(gold.get("surgeries")), _surgery_keys(rec.get("surgeries"))
            note(f, _set(g, p), sorted(g - p), sorted(p - g))
        else:
            g = {_n(x) for x in _get(gold, f) or []}
            p = {_n(x) for x in _get(rec, f) or []}
            note(f, _set(g, p), sorted(g - p), sorted(p - g))
    gi, pi = gold.get("items", []), rec.get("items", [])
    # a gold file scores the item fields it holds (real letters' gold leaves out what was not hand-checked)
    keys = set().union(*(g.keys() for g in gi)) if gi else set(ITEM_SCALARS + ITEM_SETS)
    correct = 0
    for k in range(max(len(gi), len(pi))):
        g = gi[k] if k < len(gi) else {}
        p = dict(pi[k]) if k < len(pi) else {}
        if p:
            p["guideline_sources"] = sorted({s["name"] for s in p.get("guideline_sources", []) if s.get("cited_by", "maximus") == "maximus"})
        for f in ITEM_SCALARS:
            if f in keys:
                note(f"items.{f}", _scalar(g.get(f), p.get(f)), g.get(f), p.get(f))
        for f in ITEM_SETS:
            if f not in keys:
                continue
            gs, ps = {_n(x) for x in g.get(f, [])}, {_n(x) for x in p.get(f, [])}
            note(f"items.{f}", _set(gs, ps), sorted(gs - ps), sorted(ps - gs))
        if g and p and _n(g.get("decision")) == _n(p.get("decision")):
            correct += 1
        if g.get("original_request"):  # a partial authorization: recognised = disputed portion read as the request
            ok = bool(p) and _n(p.get("request")) == _n(g.get("request")) and bool(p.get("original_request"))
            note("items.partial_recognised", Counts(tp=1) if ok else Counts(fn=1), g.get("request"), p.get("request"))
    return out, mism, (correct, len(gi))


@dataclass
class SuiteResult:
    report: dict
    records: list[dict] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


def load_gold(suite: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((suite / "gold").glob("*.json"))}


def letters_of(suite: Path, gold: dict[str, dict], only: str | None = None) -> list[Path]:
    import fnmatch

    found = {p.stem: p for p in sorted((suite / "letters").iterdir()) if p.suffix.lower() in (".txt", ".pdf")}
    return [found[k] for k in gold if k in found and (not only or fnmatch.fnmatch(k, only))]


def run_extraction(suite: Path, s, concurrency: int = 8, only: str | None = None) -> SuiteResult:
    from .run import runner as batch
    from .providers.llm import Provider
    from .core.load import read_letter

    gold = load_gold(suite)
    paths = letters_of(suite, gold, only)
    provider = Provider(s) if s.provider != "none" else None
    ex = batch.Extractor(s, provider)
    done: list[batch.Outcome] = []
    t0 = time.monotonic()
    totals = asyncio.run(batch.run([str(p) for p in paths], ex, None, None, concurrency, done.append))
    wall = time.monotonic() - t0
    fields: dict[str, Counts] = defaultdict(Counts)
    by_group: dict[str, dict[str, Counts]] = {g: defaultdict(Counts) for g in GROUPS}
    dec_by_group = {g: [0, 0] for g in GROUPS}
    mism, dec_ok, dec_n = [], 0, 0
    found = dropped = 0
    records, texts, failures = [], {}, []
    for o in done:
        lid = Path(o.path).stem
        if o.line is None:
            failures.append(o.error)
            rec = {"letter_id": lid, "items": []}
        else:
            rec = o.record.model_dump(mode="json")
            records.append(rec)
            texts[lid] = read_letter(o.path).text
            found += sum(1 for e in o.record.evidence if e.status != "not_found")
            dropped += sum(1 for e in o.record.evidence if e.status == "not_found")
        counts, mm, (ok, n) = compare(rec, gold[lid])
        grp = group_of(gold[lid])
        for k, c in counts.items():
            fields[k].add(c)
            by_group[grp][k].add(c)
        mism += mm
        dec_ok, dec_n = dec_ok + ok, dec_n + n
        dec_by_group[grp][0] += ok
        dec_by_group[grp][1] += n
    micro = Counts()
    for c in fields.values():
        micro.add(c)
    report = {
        "kind": "extraction", "suite": str(suite), "model": s.label, "letters": len(paths), "failed": failures,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": round(wall, 2),
        "fields": {k: fields[k].prf() for k in FIELDS if k in fields},
        "micro": micro.prf(),
        "decision_accuracy": round(dec_ok / dec_n, 4) if dec_n else None,
        "grounded_share": round(found / (found + dropped), 4) if found + dropped else 1.0,
        "values_kept": found, "values_dropped": dropped,
        "llm_calls": totals.usage.calls, "input_tokens": totals.usage.input_tokens, "output_tokens": totals.usage.output_tokens,
        "retry_tokens": totals.usage.retry_tokens, "cost_usd": totals.usage.cost_usd,
        "groups": {g: _group_report(by_group[g], dec_by_group[g], sum(1 for p in paths if group_of(gold[p.stem]) == g))
                   for g in GROUPS if by_group[g]},
        "mismatches": mism,
    }
    return SuiteResult(report, records, texts)


def _group_report(fields: dict[str, Counts], dec: list[int], letters: int) -> dict:
    micro = Counts()
    for c in fields.values():
        micro.add(c)
    return {"letters": letters, "fields": {k: fields[k].prf() for k in FIELDS if k in fields}, "micro": micro.prf(),
            "decision_accuracy": round(dec[0] / dec[1], 4) if dec[1] else None}


def check_thresholds(report: dict, rules: list[str]) -> list[str]:
    """``GROUP:FIELD>=X`` rules (e.g. ``real:items.category>=0.95``, F1 of that field in that group;
    FIELD ``decision_accuracy`` or ``micro`` also work). Returns the rules that fail, with the value."""
    failed = []
    for rule in rules:
        m = re.fullmatch(r"\s*(\w+):([\w.]+)\s*>=\s*([\d.]+)\s*", rule)
        if not m:
            raise ValueError(f"threshold {rule!r}: expected GROUP:FIELD>=VALUE, e.g. real:items.category>=0.95")
        grp, fld, want = m.group(1), m.group(2), float(m.group(3))
        g = report.get("groups", {}).get(grp)
        if g is None:
            failed.append(f"{rule} (no {grp} letters in this run)")
            continue
        got = g["decision_accuracy"] if fld == "decision_accuracy" else g["micro"]["f1"] if fld == "micro" else g["fields"].get(fld, {}).get("f1")
        if got is None or got < want:
            failed.append(f"{rule} (got {got})")
    return failed


# --- question answering ---------------------------------------------------------------------------

def run_qa(suite: Path, s, k: int = 6) -> dict:
    from .query.answer import ask
    from .index.rebuild import rebuild

    sr = run_extraction(suite, s)
    idx, _ = rebuild(s.data_dir / "eval-index", None, (DecisionRecord.model_validate(r) for r in sr.records))
    provider = None
    if s.provider != "none":
        from .providers.llm import Provider

        provider = Provider(s)
    rows = []
    for line in (suite / "questions.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        res = ask(idx, q["question"], k=q.get("k", k), provider=provider, model_label=s.label)
        cited = {c.letter_id for c in res.citations} | ({L["letter_id"] for L in res.letters} if res.mode == "list" else set())
        must, mustnot = set(q.get("must_cite", [])), set(q.get("must_not_cite", []))
        row = {"question": q["question"], "mode": res.mode, "filters": res.filters, "cited": sorted(cited)}
        if "count" in q:
            row["count_expected"], row["count_got"] = q["count"], res.count
            row["count_exact"] = res.count == q["count"]
        if must or res.mode != "count":
            row["citation_recall"] = round(len(cited & must) / len(must), 4) if must else 1.0
            row["citation_precision"] = round(len(cited & must) / len(cited), 4) if cited and must else (1.0 if not cited and not must else 0.0)
        row["must_not_cite_violations"] = sorted(cited & mustnot)
        facts = q.get("facts", [])
        if facts:
            blob = (res.answer + " " + " ".join(c.quote for c in res.citations)).lower()
            blob = re.sub(r"\s+", " ", blob)
            row["fact_coverage"] = round(sum(1 for f in facts if f.lower() in blob) / len(facts), 4)
        if res.mode == "why" and res.citations:  # do quotes carry the decision (this case's reasons) or restate a guideline?
            from .core.lexicon import sentence_role

            roles = [sentence_role(c.quote) for c in res.citations]
            row["decisive_share"] = round(sum(r in ("case", "conclusion") for r in roles) / len(roles), 4)
        row["removed_citations"] = res.removed
        rows.append(row)

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return round(sum(vals) / len(vals), 4) if vals else None

    reading = run_reading(suite, idx) if (suite / "reading.jsonl").is_file() else None
    return {
        "kind": "qa", "suite": str(suite), "model": s.label, "questions": len(rows), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "citation_recall": mean("citation_recall"), "citation_precision": mean("citation_precision"),
        "fact_coverage": mean("fact_coverage"), "decisive_share": mean("decisive_share"),
        "count_exact_match": round(sum(r["count_exact"] for r in rows if "count_exact" in r) / max(1, sum("count_exact" in r for r in rows)), 4),
        "must_not_cite_violations": sum(len(r["must_not_cite_violations"]) for r in rows),
        "rows": rows,
        **({"reading": reading} if reading else {}),
    }


# --- reading questions: filters as asked, counts against gold -----------------------------------------

def _cond_key(c: dict) -> tuple:
    return (c["field"], tuple(sorted(c.get("values", ()))), c.get("min"), c.get("max"), bool(c.get("negate", False)))


def _ns(x: Any) -> Any:
    """Gold JSON as attribute objects, for ``filters.row_values``."""
    from types import SimpleNamespace

    if isinstance(x, dict):
        return SimpleNamespace(**{k: _ns(v) for k, v in x.items()})
    if isinstance(x, list):
        return [_ns(v) for v in x]
    return x


def gold_rows(gold: dict[str, dict]) -> tuple[list[dict], set[str]]:
    """One filter row per gold item, and the fields some gold file lacks (counts needing them are not scored)."""
    from .core.dwc import case_outcome
    from .core.filters import row_values

    rows, missing = [], set()
    for lid, g in gold.items():
        if "surgeries" not in g:
            missing |= {"after_surgery", "fusion"}
        for fld in ("dwc_category", "dwc_subcategory"):
            if any(fld not in it for it in g["items"]):
                missing.add(fld)
        if not any(s.get("dwc_specialties") for s in [g.get("reviewer", {})]):
            missing.add("dwc_specialty")
        g = {"surgeries": [], "reviewer": {"specialties": [], "license_states": []}, "claimant": {"age": None},
             "decision_date": None, "date_of_injury": None, "ur_denial_date": None, **g, "letter_id": lid}
        g["items"] = [{"original_request": None, "drug_class": None, "quantity": None, **it} for it in g["items"]]
        g["case_outcome"] = case_outcome([it["decision"] for it in g["items"]])
        rec = _ns(g)
        rows += [row_values(rec, i) for i in range(len(g["items"]))]
    return rows, missing


def run_reading(suite: Path, idx) -> dict:
    """Each question of ``reading.jsonl``: is it read as expected (mode, filters, refusal), and is the
    count the tool gives (from the extracted records) the count the gold records give?"""
    from .query.answer import ask, latest_decision
    from .core.filters import Cond, Filters
    from .core.question import read

    gold = load_gold(suite)
    rows_gold, missing = gold_rows(gold)
    latest = latest_decision(idx)
    out = []
    for line in (suite / "reading.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        r = read(q["question"], latest)
        want = sorted(_cond_key(c) for c in q.get("filters", []))
        got = sorted(_cond_key(c.to_dict()) for c in r.filters.conds)
        refuse = bool(q.get("refuse"))
        ok = (r.mode == q["mode"] and (bool(r.refused) == refuse) and (refuse or want == got)
              and (q["mode"] != "stats" or r.group_by == q.get("group_by", [])))
        row = {"question": q["question"], "read_ok": ok, "sentence": r.sentence(), "expected": q.get("filters", []),
               "got": [c.to_dict() for c in r.filters.conds], "refused": r.refused}
        if not refuse and q["mode"] in ("count", "stats"):
            exp = Filters([Cond(c["field"], tuple(c.get("values", ())), c.get("min"), c.get("max"), c.get("negate", False))
                           for c in q.get("filters", [])])
            if missing & {c.field for c in exp.conds}:
                row["count_scored"] = False
            else:
                hit = [x for x in rows_gold if exp.match(x)]
                res = ask(idx, q["question"])
                row["count_expected"], row["count_got"] = len(hit), res.count
                if q["mode"] == "stats":  # the rate's numerator too, and groups that add up
                    row["overturned_expected"] = sum(1 for x in hit if x["decision"] == "Overturned")
                    row["overturned_got"] = res.stats["total"]["overturned"]
                row["count_ok"] = row["count_got"] == row["count_expected"] and row.get("overturned_got") == row.get("overturned_expected")
        out.append(row)
    scored = [x for x in out if "count_ok" in x]
    return {"questions": len(out), "reading_accuracy": round(sum(x["read_ok"] for x in out) / max(1, len(out)), 4),
            "count_questions": len(scored), "count_accuracy": round(sum(x["count_ok"] for x in scored) / max(1, len(scored)), 4),
            "rows": out}


# --- HTML ---------------------------------------------------------------------------------------------

def html_report(sr: SuiteResult, path: Path) -> None:
    from .page.highlight import CSS, to_html

    r = sr.report
    bars = []
    for i, (name, m) in enumerate(r["fields"].items()):
        w = int(m["f1"] * 300)
        bars.append(f'<text x="0" y="{i * 22 + 15}" font-size="12">{html.escape(name)}</text>'
                    f'<rect x="230" y="{i * 22 + 3}" width="{w}" height="16" fill="#4a90d9"/>'
                    f'<text x="{235 + w}" y="{i * 22 + 15}" font-size="12">F1 {m["f1"]:.2f} · P {m["precision"]:.2f} · R {m["recall"]:.2f}</text>')
    svg = f'<svg width="760" height="{len(bars) * 22 + 10}" xmlns="http://www.w3.org/2000/svg">{"".join(bars)}</svg>'
    mm = "".join(f"<tr><td>{html.escape(m['letter'])}</td><td>{html.escape(m['field'])}</td><td>{html.escape(json.dumps(m['expected']))}</td>"
                 f"<td>{html.escape(json.dumps(m['got']))}</td></tr>" for m in r["mismatches"])
    letters = []
    for rec in sr.records:
        lid = rec["letter_id"]
        dropped = [e for e in rec["evidence"] if e["status"] == "not_found"]
        drop_html = "".join(f"<li>{html.escape(e['field'])}: {html.escape(e.get('value') or '')}</li>" for e in dropped)
        letters.append(f"<details><summary>{html.escape(lid)} — {len(rec['items'])} item(s), flags: {html.escape(', '.join(rec['flags']) or 'none')}</summary>"
                       f"<p>Hover a highlight to see the field it grounds.</p>"
                       + (f"<p>Dropped (not in the letter):</p><ul>{drop_html}</ul>" if dropped else "")
                       + f"<pre>{to_html(sr.texts.get(lid, ''), rec['evidence'])}</pre></details>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>imr-llm eval: {html.escape(r['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}pre{{white-space:pre-wrap;background:#fafafa;padding:1em;border:1px solid #ddd}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:12px;vertical-align:top}}mark{{padding:0}}{CSS}</style></head><body>
<h1>Extraction eval — {html.escape(r['model'])}</h1>
<p>Suite {html.escape(r['suite'])} · {r['letters']} letters · {r['when']} · micro F1 {r['micro']['f1']:.3f} ·
decision accuracy {r['decision_accuracy']} · grounded share {r['grounded_share']} ({r['values_dropped']} values dropped) ·
LLM calls {r['llm_calls']} · tokens {r['input_tokens']}/{r['output_tokens']}</p>
<h2>Per field</h2>{svg}
<h2>Mismatches ({len(r['mismatches'])})</h2><table><tr><th>letter</th><th>field</th><th>expected</th><th>got</th></tr>{mm}</table>
<h2>Letters with evidence highlighted</h2>{''.join(letters)}
</body></html>"""
    path.write_text(page, encoding="utf-8")
