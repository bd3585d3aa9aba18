"""Real DWC letters as users download them (evals/letters/r*.pdf: 63 redacted, AES-encrypted PDFs and
a 2013 notice excerpt), each real-world case of issue 10 on the letters where it occurs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imr_llm.cli import app
from imr_llm.extract.assemble import analyse, assemble
from imr_llm.core.ground import check_evidence
from imr_llm.core.filters import row_values
from imr_llm.core.load import read_letter

from .conftest import LETTERS

runner = CliRunner()
REAL = sorted(LETTERS.glob("r*.pdf"))
GOLD = LETTERS.parent / "gold"
LAYOUT = Path(__file__).parent / "fixtures" / "layout"


def record(path: Path, text: str | None = None):
    """The no-model record of a letter (or of ``text`` written beside it as a .txt)."""
    if text is not None:
        p = Path(path.stem + ".txt")
        p.write_text(text)
        path = p
    letter = read_letter(path)
    return assemble(letter, analyse(letter)), letter


def item(rec, request_start: str):
    return next(it for it in rec.items if it.request.startswith(request_start))


def test_every_real_pdf_is_read_and_matches_its_gold_decisions():
    assert len(REAL) == 63
    res = runner.invoke(app, ["extract", *map(str, REAL), "--out", "real.jsonl", "--csv", "real.csv"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in Path("real.jsonl").read_text().splitlines()]
    assert len(recs) == 63
    for r in recs:
        gold = json.loads((GOLD / f"{r['letter_id']}.json").read_text())
        assert [i["decision"] for i in r["items"]] == [i["decision"] for i in gold["items"]], r["letter_id"]
        assert r["case_number"] == gold["case_number"] and r["decision_date"] == gold["decision_date"]
    # the CSV carries the partial-authorization and drug columns
    head = Path("real.csv").read_text().splitlines()[0].split(",")
    assert {"original_request", "authorized", "drug", "drug_class"} <= set(head)


def test_partial_authorizations_record_the_disputed_portion():
    rec, letter = record(LETTERS / "r015_CM16-0233904.pdf")
    it = rec.items[0]
    assert (it.request, it.original_request, it.authorized) == ("Baclofen 100mg #3", "Baclofen 100mg #30", "Baclofen 100mg #27")
    assert (it.quantity, it.drug, it.drug_class, it.decision) == (3, "Baclofen", "muscle_relaxant", "Upheld")
    assert not check_evidence(rec, letter.text)
    rec, _ = record(LETTERS / "r078_CM17-0002181.pdf")  # the disputed part names only the refills
    it = rec.items[0]
    assert it.request == "Two refills of Ibuprofen 600mg #90" and it.quantity == 2
    assert it.original_request.startswith("Ibuprofen 600mg #90 with 2 refill") and it.drug_class == "nsaid"
    rec, _ = record(LETTERS / "r164_CM17-0015218.pdf")  # "with open carpal tunnel release is: Overturned"
    it = rec.items[0]
    assert it.request == "with open carpal tunnel release" and it.category == "surgery" and it.body_regions == ["wrist"]
    assert it.authorized == "Open reduction internal fixation on left distal radius fracture" and it.decision == "Overturned"
    rec, _ = record(LETTERS / "r147_CM17-0012593.pdf")  # "Physical therapy 2 times 6 ... / 1 times 6"
    it = rec.items[0]
    assert it.request == "Physical therapy 1 times 6 for the head" and it.quantity == 6 and it.body_regions == ["head"]


def test_categories_and_drug_classes_of_real_requests():
    rec, _ = record(LETTERS / "r064_CM16-0248471.pdf")
    braces = item(rec, "Wrist braces")
    assert braces.category == "dme" and braces.drug_class is None and braces.quantity == 2
    rec, _ = record(LETTERS / "r050_CM16-0245466.pdf")
    got = {it.request: (it.category, it.drug_class) for it in rec.items}
    assert got["Etodolac"] == ("medication", "nsaid")
    assert got["Lidocaine patch"] == ("medication", "topical")
    assert got["Omeprazole"] == ("medication", "ppi_gi")
    assert got["Back support"] == ("dme", None)
    rec, _ = record(LETTERS / "r008_CM16-0230651.pdf")
    got = {it.request.split(" to ")[0]: (it.category, it.quantity) for it in rec.items}
    assert got["Infrared heat"] == ("modality", 12) and got["Myofascial release"] == ("modality", 12)
    assert item(rec, "Ultram").drug_class == "opioid"
    rec, _ = record(LETTERS / "r128_CM17-0009883.pdf")
    assert rec.items[0].category == "transportation"
    rec, _ = record(LETTERS / "r130_CM17-0009995.pdf")
    assert item(rec, "Retrospective Lidopro").drug_class == "compounded"
    # no real item is left uncategorised
    for p in REAL:
        rec, _ = record(p)
        assert all(it.category and it.category != "other" for it in rec.items), p.name


@pytest.mark.parametrize("letter,line,quantity", [
    ("r005_CM16-0228949", "Continue physical therapy 3 times a week for 2 weeks", 6),
    ("r139_CM17-0010885", "Initial acupuncture, 1 to 2 times per week for 4 weeks, for the neck", 8),
    ("r153_CM17-0013587", "Follow up office visit times 2", 2),
    ("r084_CM17-0003192", "5 sessions of chiropractic physiotherapy for the left elbow", 5),
])
def test_quantity_is_the_total_of_the_disputed_request(letter, line, quantity):
    rec, _ = record(LETTERS / f"{letter}.pdf")
    assert item(rec, line).quantity == quantity


def test_complete_letter_without_final_period_is_kept_and_flagged(tmp_path):
    text = read_letter(LETTERS / "r005_CM16-0228949.pdf").text
    cut = text.rstrip()
    assert cut.endswith("not medically necessary.")
    rec, _ = record(Path("r005_no_period"), cut[:-1])
    assert rec.items[0].decision == "Upheld"
    assert any(f.startswith("no_final_period") for f in rec.flags)
    # a rationale cut before any conclusion is still refused as truncated
    Path("cut.txt").write_text(cut[: cut.index("physical therapy is indicated") + 20])
    res = runner.invoke(app, ["extract", "cut.txt", "--out", "cut.jsonl"])
    assert res.exit_code == 1 and "truncated" in res.output


@pytest.mark.parametrize("name", ["r005_CM16-0228949", "r008_CM16-0230651", "r122_CM17-0008633"])
def test_pdftotext_layout_text_reads_like_the_pdf(name):
    """The same letter converted with `pdftotext -layout` (two-column header, empty-line paragraphs)."""
    pdf, _ = record(LETTERS / f"{name}.pdf")
    lay, letter = record(LAYOUT / f"{name}.layout.txt")
    for f in ("case_number", "date_assigned", "date_of_injury", "decision_date", "ur_denial_date", "application_received", "priority"):
        assert getattr(lay, f) == getattr(pdf, f) and getattr(pdf, f) is not None, f
    assert lay.reviewer == pdf.reviewer
    assert [(i.request, i.decision, i.category, i.quantity, i.body_regions, i.original_request) for i in lay.items] == \
           [(i.request, i.decision, i.category, i.quantity, i.body_regions, i.original_request) for i in pdf.items]
    assert not check_evidence(lay, letter.text)


def test_many_body_regions_never_cost_the_record():
    text = read_letter(LETTERS / "r005_CM16-0228949.pdf").text
    nine = "Physical therapy for the neck, mid back, low back, shoulders, elbows, wrists, hands, hips and knees"
    text = text.replace("Continue physical therapy 3 times a week for 2 weeks", nine)
    rec, letter = record(Path("r005_nine"), text)
    assert rec.items[0].body_regions == ["cervical", "thoracic", "lumbar", "shoulder", "elbow", "wrist", "hand", "hip", "knee"]
    assert not check_evidence(rec, letter.text)


def test_2013_notice_template():
    rec, letter = record(LETTERS / "r195_2013_notice_excerpt.txt")
    assert [(i.request, i.decision) for i in rec.items] == [
        ("a 28 day functional restoration program", "Upheld"), ("a 6 month follow-up aftercare program", "Upheld")]
    assert (rec.decision_date, rec.application_received, rec.ur_denial_date) == ("2013-09-26", "2013-09-06", "2013-08-30")
    assert rec.reviewer.specialties == ["Occupational Medicine"] and rec.reviewer.license_states == ["California"]
    assert "notice_2013" in rec.layout and any(f.startswith("no_rationale") for f in rec.flags)
    assert not check_evidence(rec, letter.text)
    # "is medically necessary and appropriate" is an overturn
    over = letter.text.replace("is notmedically necessary and appropriate.\n2)", "is medically necessary and appropriate.\n2)", 1)
    rec, _ = record(Path("r195_over"), over)
    assert [i.decision for i in rec.items] == ["Overturned", "Upheld"]


def test_unrecognised_imr_layout_is_flagged_not_silently_empty():
    Path("family.txt").write_text(
        "MAXIMUS FEDERAL SERVICES, INC.\nIndependent Medical Review\nIMR DECISION(S) AND RATIONALE(S)\n"
        "Issue: lumbar MRI. The requested treatment is not medically necessary.\n")
    Path("recipe.txt").write_text("Preheat the oven to 350 degrees. Mix flour and sugar.\n")
    res = runner.invoke(app, ["extract", "family.txt", "recipe.txt", "--out", "o.jsonl"])
    assert res.exit_code == 1  # the recipe is refused
    assert re.search(r"error: recipe\.txt: not an IMR", res.output)
    rec = json.loads(Path("o.jsonl").read_text())
    assert rec["items"] == [] and any(f.startswith("unknown_layout") for f in rec["flags"])


def test_ask_filters_and_counts_with_the_new_fields():
    res = runner.invoke(app, ["ingest", *map(str, REAL)])
    assert res.exit_code == 0, res.output
    gold = [json.loads(p.read_text()) for p in sorted(GOLD.glob("r*.json")) if not p.stem.startswith("r195")]
    items = [it for g in gold for it in g["items"]]
    for q, pred in [
        ("How many opioid requests were upheld?", lambda it: it["drug_class"] == "opioid" and it["decision"] == "Upheld"),
        ("How many partial authorizations of physical therapy?", lambda it: it["original_request"] and it["category"] == "physical_therapy"),
        ("How many medication requests other than opioids?", lambda it: it["category"] == "medication" and it["drug_class"] != "opioid"),
    ]:
        out = runner.invoke(app, ["ask", q, "--json"])
        assert out.exit_code == 0, out.output
        ans = json.loads(out.output)
        assert ans["count"] == sum(1 for it in items if pred(it)), (q, ans["answer"])
        assert ans["answer"].startswith("Counting disputed items")
    out = runner.invoke(app, ["ask", "How many requests were overturned?", "--drug-class", "opioid", "--json"])
    ans = json.loads(out.output)
    assert ans["count"] == sum(1 for it in items if it["drug_class"] == "opioid" and it["decision"] == "Overturned")


SURGERIES = {  # the hand-checked gold of evals/gold, as (procedure, region, date); quotes checked at their offsets
    "r016_CM16-0234202": [("closed reduction and percutaneous pinning", "wrist", "2016-11-09")],
    "r071_CM16-0249726": [("exploratory laparotomy with a colon resection", None, None)],
    "r142_CM17-0011703": [("lumbar spine surgery", "lumbar", None), ("anterior cervical fusion", "cervical", None)],
    "r173_CM17-0016761": [("repair", "hand", "2016-10-22")],
    "r164_CM17-0015218": [("open reduction internal fixation", "wrist", "2016-12-13"),  # a retrospective request: done on its DOS
                          ("open carpal tunnel release", "wrist", "2016-12-13")],
    "r153_CM17-0013587": [],  # "no pericardial effusion": no fusion
    "r169_CM17-0015957": [],  # "joint effusion"; the arthroscopy is what the letter requests
    "r118_CM17-0008479": [],  # "previously underwent acupuncture": not an operation
}


@pytest.mark.parametrize("name", sorted(SURGERIES))
def test_surgeries_in_real_case_summaries(name):
    rec, letter = record(LETTERS / f"{name}.pdf")
    assert [(s.procedure, s.body_region, s.date) for s in rec.surgeries] == SURGERIES[name]
    gold = json.loads((GOLD / f"{name}.json").read_text())["surgeries"]
    assert {(s.date or "", s.body_region or "") for s in rec.surgeries} == {(g["date"] or "", g["body_region"] or "") for g in gold}
    assert not check_evidence(rec, letter.text)
    for i, s in enumerate(rec.surgeries):
        ev = {e.field: e for e in rec.evidence if e.field.startswith(f"surgeries[{i}].")}
        p = ev[f"surgeries[{i}].procedure"]
        assert re.sub(r"\s+", " ", letter.text[p.start:p.end]) == s.procedure
        if s.date:
            d = ev[f"surgeries[{i}].date"]
            assert letter.text[d.start:d.end] in ("11-9-2016", "10-22-16", "12-13-2016")
    row = row_values(rec, 0)
    assert row["had_surgery"] == bool(SURGERIES[name]) and row["had_fusion"] == (name == "r142_CM17-0011703")
