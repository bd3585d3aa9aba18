"""The eval runner: metrics are computed right, thresholds fail CI, reports are produced."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from imr_llm.cli import app
from imr_llm.evaluate import compare

from .conftest import ROOT

runner = CliRunner()
SUITE = ROOT / "evals"


def test_compare_counts_scalars_sets_and_items():
    gold = {"letter_id": "x", "case_number": "CM1", "claimant": {"age": 56, "sex": None}, "diagnoses": ["Low back pain", "sciatica"],
            "items": [{"request": "6 PT", "decision": "Upheld", "category": "physical_therapy", "quantity": 6, "frequency": None,
                       "body_regions": ["lumbar"], "guideline_sources": ["MTUS Chronic Pain"], "denial_reasons": ["no_functional_improvement"]}]}
    rec = {"case_number": "CM1", "claimant": {"age": 24, "sex": "male"}, "diagnoses": ["low back pain.", "obesity"],
           "items": [{"request": "6  PT", "decision": "Overturned", "category": "physical_therapy", "quantity": None, "frequency": None,
                      "body_regions": ["lumbar", "knee"], "guideline_sources": [{"name": "MTUS Chronic Pain", "cited_by": "maximus"},
                                                                            {"name": "ACOEM", "cited_by": "claims_administrator"}],
                      "denial_reasons": []}]}
    c, mism, (ok, n) = compare(rec, gold)
    assert (c["case_number"].tp, c["case_number"].fp) == (1, 0)
    assert (c["claimant.age"].fp, c["claimant.age"].fn) == (1, 1)  # wrong value: both
    assert (c["claimant.sex"].fp, c["claimant.sex"].fn) == (1, 0)  # invented value
    assert (c["diagnoses"].tp, c["diagnoses"].fp, c["diagnoses"].fn) == (1, 1, 1)  # normalised match
    assert c["items.request"].tp == 1 and c["items.quantity"].fn == 1
    assert (c["items.body_regions"].tp, c["items.body_regions"].fp) == (1, 1)
    assert c["items.guideline_sources"].tp == 1 and c["items.guideline_sources"].fp == 0  # only MAXIMUS-cited compared
    assert (ok, n) == (0, 1)
    assert any(m["field"] == "diagnoses" and m["expected"] == ["sciatica"] and m["got"] == ["obesity"] for m in mism)


def test_layout_parser_eval_on_the_suite_with_reports(tmp_path):
    res = runner.invoke(app, ["eval", "extraction", str(SUITE), "--out", "a.json", "--html", "r.html", "--min-f1", "0.95",
                              "--min-decision-accuracy", "1.0"])
    assert res.exit_code == 0, res.output
    r = json.loads(Path("a.json").read_text())
    assert r["letters"] == 91 and r["decision_accuracy"] == 1.0 and r["micro"]["f1"] >= 0.95
    assert r["fields"]["items.decision"]["f1"] == 1.0
    # real letters (67: 63 DWC PDFs, the 2013 notice, 3 text letters) and synthetic ones reported apart
    assert r["groups"]["real"]["letters"] == 67 and r["groups"]["synthetic"]["letters"] == 24
    assert r["groups"]["real"]["decision_accuracy"] == 1.0
    html = Path("r.html").read_text()
    assert "<svg" in html and "<mark" in html and "items[0].decision" in html
    # a threshold above what is reachable fails the command (for CI)
    res = runner.invoke(app, ["eval", "extraction", str(SUITE), "--only", "00*", "--out", "b.json", "--min-f1", "1.01"])
    assert res.exit_code == 1 and "below threshold" in res.output
    assert json.loads(Path("b.json").read_text())["letters"] == 3
    res = runner.invoke(app, ["eval", "compare", "a.json", "b.json"])
    assert res.exit_code == 0 and "delta F1" in res.output


def test_qa_eval_on_the_suite(tmp_path):
    res = runner.invoke(app, ["eval", "qa", str(SUITE), "--out", "qa.json", "--min-citation-recall", "0.9"])
    assert res.exit_code == 0, res.output
    r = json.loads(Path("qa.json").read_text())
    assert r["questions"] >= 15 and r["must_not_cite_violations"] == 0
    fusion = next(x for x in r["rows"] if "fusion" in x["question"])
    assert fusion["citation_recall"] == 1.0 and fusion["citation_precision"] == 1.0
