"""DWC's vocabulary beside ours: the one mapping table, and every real item mapped."""
from __future__ import annotations

import json

import pytest

from imr_llm.core import dwc
from imr_llm.core.drugs import DRUGS
from imr_llm.core.lexicon import CATEGORY_NAMES

from .conftest import LETTERS
from .test_real_letters import REAL, record


def test_every_category_of_ours_has_a_dwc_category_and_subcategories_come_from_dwc_lists():
    taxonomy = (LETTERS.parents[2] / "shared" / "dwc-taxonomy.md")
    text = taxonomy.read_text() if taxonomy.exists() else None
    for cat in CATEGORY_NAMES:
        if cat == "other":
            assert dwc.classify(cat, "x") is None
            continue
        dcat, sub, _ = dwc.CATEGORY_MAP[cat]
        assert dcat in dwc.DWC_CATEGORIES
        if text:  # every subcategory and drug class is spelled as DWC's search form spells it
            for s in [sub] + [f if isinstance(f, str) else f[1] for _, f in dwc.CATEGORY_MAP[cat][2]]:
                assert s is None or s in text, s
    if text:
        for _, dwc_class, _ in DRUGS:
            assert dwc_class in text, dwc_class


@pytest.mark.parametrize("cat,request_,want", [
    ("injection", "Right L4-5 facet injection", ("Injection", "Facet Injection")),
    ("diagnostic", "EMG/NCV of the lower extremities", ("Diagnostic Testing", "EMG/NCV/NCS")),
    ("diagnostic", "Urine drug screen", ("Diagnostic Testing", "Lab & Pathology")),
    ("dme", "TENS unit", ("DMEPOS", "Electrical Stimulation")),
    ("dme", "Wrist braces #2", ("DMEPOS", "Prosthetics/Orthotics")),
    ("surgery", "Arthroscopy of the left knee", ("Surgery", "Arthroscopic Surgery")),
    ("surgery", "L4-5 lumbar fusion", ("Surgery", "Spine")),
    ("consultation", "Spine surgery evaluation for the lumbar", ("Surgery", "Surgical Consult")),
    ("consultation", "Follow up office visit times 2", ("Evaluation & Management", "Medical Specialties")),
    ("medication", "Norco 10/325mg #60", ("Pharmaceuticals", "Opioids")),
])
def test_subcategories(cat, request_, want):
    from imr_llm.core.drugs import classify

    d = classify(request_)
    assert dwc.classify(cat, request_, d[2] if d else None)[:2] == want


def test_case_outcome_and_specialties():
    assert dwc.case_outcome(["Upheld", "Upheld"]) == "Uphold"
    assert dwc.case_outcome(["Overturned"]) == "Overturn"
    assert dwc.case_outcome(["Upheld", "Overturned"]) == "Partial Overturn"
    assert dwc.specialty("Chiropractor") == "Chiropractic"
    assert dwc.specialty("Public Health &  General Preventive Medicine") == "Public Health & General Preventive Medicine"
    assert dwc.specialty("Pediatric Rehabilitation Medicine") is None


def test_every_real_item_has_dwc_category_and_subcategory_with_evidence():
    from imr_llm.core.ground import check_evidence, ungrounded_values

    outcomes = set()
    for p in REAL:
        rec, letter = record(p)
        for it in rec.items:
            assert it.dwc_category and it.dwc_subcategory, (p.name, it.request)
            if it.category == "medication":
                assert it.dwc_category == "Pharmaceuticals" and it.dwc_drug_class == it.dwc_subcategory
        assert rec.case_outcome == dwc.case_outcome([i.decision for i in rec.items])
        outcomes.add(rec.case_outcome)
        assert set(rec.reviewer.dwc_specialties) <= set(dwc.SPECIALTIES)
        assert not check_evidence(rec, letter.text) and not ungrounded_values(rec)
    assert outcomes == {"Uphold", "Overturn", "Partial Overturn"}
    rec, _ = record(LETTERS / "r139_CM17-0010885.pdf")  # a specialty wrapped onto the next line
    assert "Public Health & General Preventive Medicine" in rec.reviewer.dwc_specialties
