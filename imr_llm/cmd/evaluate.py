"""`imr eval extraction|qa|compare`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.markup import escape
from rich.text import Text

from .common import die, get_settings

app = typer.Typer(no_args_is_help=True)
DEFAULT_SUITE = Path("evals")


def _save(report: dict, out: Optional[Path], default_name: str, s) -> Path:
    out = out or (s.data_dir / "eval-runs" / default_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return out


@app.command("extraction")
def extraction(
    suite: Path = typer.Argument(DEFAULT_SUITE, help="suite folder with letters/ and gold/"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="PROVIDER:MODEL; default IMR_MODEL or none (layout parser alone)"),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON report (default DATA_DIR/eval-runs/...)"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="self-contained HTML report with evidence highlighted"),
    min_f1: Optional[float] = typer.Option(None, "--min-f1", help="exit 1 if micro F1 is below"),
    min_decision_accuracy: Optional[float] = typer.Option(None, "--min-decision-accuracy"),
    concurrency: int = typer.Option(8, "--concurrency", "-c"),
    only: Optional[str] = typer.Option(None, "--only", help="letter-id glob, e.g. '00*' for the three real letters"),
    show: int = typer.Option(15, "--show-mismatches", help="mismatches to print (all are in the JSON/HTML)"),
    require: list[str] = typer.Option([], "--require", help="GROUP:FIELD>=F1, repeatable, e.g. 'real:items.category>=0.95' (exit 1 if not met)"),
) -> None:
    """Per-field precision/recall/F1, decision accuracy and grounding against gold records,
    for real and synthetic letters apart (and together)."""
    from ..evaluate import check_thresholds, html_report, run_extraction

    s = get_settings(model)
    if not (suite / "gold").is_dir():
        die(f"{suite}: no gold/ folder (a suite holds letters/ and gold/)")
    sr = run_extraction(suite, s, concurrency, only)
    r = sr.report
    con = Console()
    groups = r.get("groups", {})
    names = list(groups)
    t = Table("field", *[f"{g} F1 ({groups[g]['letters']})" for g in names], "all P", "all R", "all F1", "tp", "fp", "fn",
              title=f"extraction eval · {r['model']} · {r['letters']} letters")
    for name, m in r["fields"].items():
        per = [f"{groups[g]['fields'][name]['f1']:.3f}" if name in groups[g]["fields"] else "-" for g in names]
        t.add_row(name, *per, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["tp"]), str(m["fp"]), str(m["fn"]))
    mi = r["micro"]
    t.add_row("[bold]micro[/bold]", *[f"{groups[g]['micro']['f1']:.3f}" for g in names], f"{mi['precision']:.3f}",
              f"{mi['recall']:.3f}", f"[bold]{mi['f1']:.3f}[/bold]", str(mi["tp"]), str(mi["fp"]), str(mi["fn"]))
    t.add_row("decision accuracy", *[str(groups[g]["decision_accuracy"]) for g in names], "", "", str(r["decision_accuracy"]), "", "", "")
    con.print(t)
    con.print(f"decision accuracy {r['decision_accuracy']} · grounded share {r['grounded_share']} "
              f"({r['values_kept']} kept, {r['values_dropped']} dropped) · LLM calls {r['llm_calls']} · "
              f"tokens {r['input_tokens']}/{r['output_tokens']} · {r['wall_s']} s")
    for m in r["mismatches"][:show]:
        con.print(f"  [yellow]{escape(str(m['letter']))}[/yellow] {m['field']}: expected {escape(json.dumps(m['expected']))} "
                  f"got {escape(json.dumps(m['got']))}", highlight=False)
    if len(r["mismatches"]) > show:
        con.print(f"  ... {len(r['mismatches']) - show} more in the report")
    for f in r["failed"]:
        con.print(f"[red]failed:[/red] {escape(str(f))}")
    path = _save(r, out, f"extraction-{s.label.replace('/', '_').replace(':', '_')}.json", s)
    con.print(f"report: {escape(str(path))}")
    if html_out:
        html_report(sr, html_out)
        con.print(f"html: {escape(str(html_out))}")
    try:
        failed = check_thresholds(r, require)
    except ValueError as e:
        die(str(e))
    if failed:
        die("below threshold: " + "; ".join(failed), 1)
    if (min_f1 is not None and mi["f1"] < min_f1) or (min_decision_accuracy is not None and (r["decision_accuracy"] or 0) < min_decision_accuracy):
        die(f"below threshold: micro F1 {mi['f1']:.3f} (min {min_f1}), decision accuracy {r['decision_accuracy']} (min {min_decision_accuracy})", 1)


@app.command("qa")
def qa(
    suite: Path = typer.Argument(DEFAULT_SUITE),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    out: Optional[Path] = typer.Option(None, "--out"),
    min_citation_recall: Optional[float] = typer.Option(None, "--min-citation-recall"),
    min_reading_accuracy: Optional[float] = typer.Option(None, "--min-reading-accuracy", help="questions of reading.jsonl read as expected"),
    min_count_accuracy: Optional[float] = typer.Option(None, "--min-count-accuracy", help="reading.jsonl counts equal to the gold counts"),
    k: int = typer.Option(6, "--k"),
) -> None:
    """Citation recall/precision, must-not-cite violations, fact coverage and count exact match; with
    reading.jsonl, how questions are read (filters, negation, dates, ranges) and their counts against gold."""
    from ..evaluate import run_qa

    s = get_settings(model)
    if not (suite / "questions.jsonl").is_file():
        die(f"{suite}: no questions.jsonl")
    r = run_qa(suite, s, k)
    con = Console()
    t = Table("question", "mode", "cit. recall", "cit. prec.", "facts", "count", "must-not", title=f"QA eval · {r['model']}")
    for row in r["rows"]:
        cnt = f"{row['count_got']}/{row['count_expected']}" if "count_expected" in row else ""
        t.add_row(row["question"][:60], row["mode"], str(row.get("citation_recall", "")), str(row.get("citation_precision", "")),
                  str(row.get("fact_coverage", "")), cnt, ", ".join(row["must_not_cite_violations"]))
    con.print(t)
    con.print(f"citation recall {r['citation_recall']} · precision {r['citation_precision']} · fact coverage {r['fact_coverage']} · "
              f"count exact {r['count_exact_match']} · must-not-cite violations {r['must_not_cite_violations']}")
    rd = r.get("reading")
    if rd:
        for row in rd["rows"]:
            if not row["read_ok"] or row.get("count_ok") is False:
                con.print(Text.assemble(("misread" if not row["read_ok"] else "wrong count", "yellow"), f": {row['question']}\n    {row['sentence']}"
                                        + (f" (count {row['count_got']}, gold {row['count_expected']})" if "count_ok" in row else "")))
        con.print(f"reading: {rd['questions']} questions, read as expected {rd['reading_accuracy']} · "
                  f"counts equal to gold {rd['count_accuracy']} ({rd['count_questions']} counted)")
    path = _save(r, out, f"qa-{s.label.replace('/', '_').replace(':', '_')}.json", s)
    con.print(f"report: {escape(str(path))}")
    if min_citation_recall is not None and (r["citation_recall"] or 0) < min_citation_recall:
        die(f"below threshold: citation recall {r['citation_recall']} (min {min_citation_recall})", 1)
    for name, want, got in (("reading accuracy", min_reading_accuracy, (rd or {}).get("reading_accuracy")),
                            ("count accuracy", min_count_accuracy, (rd or {}).get("count_accuracy"))):
        if want is not None and (got is None or got < want):
            die(f"below threshold: {name} {got} (min {want})", 1)


@app.command("compare")
def compare(run_a: Path = typer.Argument(...), run_b: Path = typer.Argument(...)) -> None:
    """Two extraction (or QA) reports side by side."""
    a, b = json.loads(run_a.read_text()), json.loads(run_b.read_text())
    con = Console()
    if a.get("kind") == "qa":
        t = Table("metric", a["model"], b["model"], "delta", title="QA runs")
        for key in ("citation_recall", "citation_precision", "fact_coverage", "count_exact_match", "must_not_cite_violations"):
            va, vb = a.get(key) or 0, b.get(key) or 0
            t.add_row(key, str(va), str(vb), f"{vb - va:+.3f}")
        con.print(t)
        return
    t = Table("field", f"A: {a['model']}", f"B: {b['model']}", "delta F1", title=f"{run_a.name} vs {run_b.name}")
    for name in dict.fromkeys(list(a["fields"]) + list(b["fields"])):
        fa = a["fields"].get(name, {}).get("f1")
        fb = b["fields"].get(name, {}).get("f1")
        d = f"{fb - fa:+.3f}" if fa is not None and fb is not None else ""
        t.add_row(name, f"{fa:.3f}" if fa is not None else "-", f"{fb:.3f}" if fb is not None else "-", d)
    t.add_row("micro", f"{a['micro']['f1']:.3f}", f"{b['micro']['f1']:.3f}", f"{b['micro']['f1'] - a['micro']['f1']:+.3f}")
    t.add_row("decision accuracy", str(a["decision_accuracy"]), str(b["decision_accuracy"]), "")
    t.add_row("tokens in/out", f"{a['input_tokens']}/{a['output_tokens']}", f"{b['input_tokens']}/{b['output_tokens']}", "")
    con.print(t)
