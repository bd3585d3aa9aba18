"""Layout parser + rules on the three real seed letters: every field, every offset checked."""
from __future__ import annotations

import re

import pytest

from imr_llm.extract.assemble import analyse, assemble
from imr_llm.core.ground import check_evidence
from imr_llm.core.load import read_letter


def _rec(path):
    letter = read_letter(path)
    return letter, assemble(letter, analyse(letter))


def _ws(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def _quote(rec, field):
    evs = [e for e in rec.evidence if e.field == field]
    assert evs, f"no evidence for {field}"
    return _ws(evs[0].quote)


@pytest.mark.parametrize("key", ["000", "001", "004"])
def test_every_evidence_slice_equals_quote(seeds, key):
    letter, rec = _rec(seeds[key])
    assert check_evidence(rec, letter.text) == []
    found = [e for e in rec.evidence if e.status != "not_found"]
    assert found and all(letter.text[e.start:e.end] == e.quote for e in found)
    # every non-null scalar value has an evidence entry
    paths = {e.field for e in found}
    for name in ("case_number", "date_assigned", "date_of_injury", "decision_date", "ur_denial_date",
                 "application_received", "priority", "clinical_summary"):
        if getattr(rec, name) is not None:
            assert name in paths, name
    for i, it in enumerate(rec.items):
        for name in ("request", "decision", "category", "quantity", "frequency", "rationale",
                     "claims_administrator_guideline", "maximus_guideline"):
            if getattr(it, name) is not None:
                assert f"items[{i}].{name}" in paths, (i, name)
        for j, _ in enumerate(it.body_regions):
            assert f"items[{i}].body_regions[{j}]" in paths


def test_seed_000_no_header_credentials_in_sentence(seeds):
    letter, r = _rec(seeds["000"])
    assert r.layout == ["credentials_sentence"]
    assert r.case_number is None and r.decision_date is None and r.priority is None
    assert r.reviewer.specialties == ["Occupational Medicine"]
    assert r.reviewer.license_states == ["California"]
    assert r.claimant.age is None and r.claimant.sex is None  # the letter states neither
    assert r.date_of_injury == "2002-12-09"
    assert _quote(r, "date_of_injury") == "industrial injury of December 9, 2002"
    assert r.diagnoses == ["chronic low back pain"]
    assert len(r.surgeries) == 1
    s = r.surgeries[0]
    assert (s.body_region, s.level, s.date) == ("lumbar", "L3-L4", "2014-05-21")
    assert "fusion" in s.procedure
    assert _quote(r, "surgeries[0].date") == "May 21, 2014"
    assert r.clinical_summary.startswith("The applicant is a represented employee who has filed a claim")
    assert r.clinical_summary.endswith("the attending provider's appeal letter.")
    assert len(r.items) == 1
    it = r.items[0]
    assert it.request == "Twelve additional physical therapy visits, two times a week for six weeks for the lumbar spine"
    assert it.decision == "Upheld"
    assert (it.category, it.quantity, it.frequency) == ("physical_therapy", 12, "two times a week for six weeks")
    assert _quote(r, "items[0].quantity") == "Twelve"
    assert it.body_regions == ["lumbar"]
    assert it.claims_administrator_guideline == "Decision based on MTUS ACOEM Chapter 12 Low Back Complaints."
    assert it.maximus_guideline == "Decision based on MTUS Postsurgical Treatment Guidelines."
    assert [(g.name, g.cited_by) for g in it.guideline_sources] == [("MTUS ACOEM", "claims_administrator"), ("MTUS Post-Surgical", "maximus")]
    assert it.guideline_sources[0].detail == "Chapter 12 Low Back Complaints"
    assert it.rationale.startswith("The applicant was still within the six-month post-surgical physical medicine")
    assert it.rationale.endswith("Therefore, the request was/is not medically necessary.")
    assert "post-surgical physical medicine period" in it.rationale  # line-end hyphen kept, break removed
    assert "no_functional_improvement" in it.denial_reasons and "insufficient_documentation" in it.denial_reasons
    # the request spans a line break in the file: the quote is the original text, offsets exact
    ev = next(e for e in r.evidence if e.field == "items[0].request")
    assert "\n" in ev.quote and letter.text[ev.start:ev.end] == ev.quote


def test_seed_001_credentials_block_two_items(seeds):
    _, r = _rec(seeds["001"])
    assert r.layout == ["credentials_block"]
    assert r.reviewer.specialties == ["Physical Medicine & Rehabilitation"]
    assert r.reviewer.license_states == ["California"]
    assert (r.claimant.age, r.claimant.sex) == (56, "female")
    assert _quote(r, "claimant.age") == "56 year old female"
    assert r.date_of_injury == "2014-04-07"
    assert r.case_number is None
    assert r.diagnoses[:3] == ["cervical disc protrusion", "cervical pain", "cervical radiculopathy"]
    assert "lumbar spondylolisthesis" in r.diagnoses
    assert r.prior_treatments == ["medication management", "acupuncture", "physiotherapy"]
    assert r.surgeries == []
    assert [i.request for i in r.items] == [
        "6 Physical therapy sessions for the cervical, thoracic and lumbar spine",
        "6 Acupuncture therapy sessions for the Cervical, Thoracic and Lumbar spine",
    ]
    assert [i.decision for i in r.items] == ["Upheld", "Upheld"]
    assert [i.category for i in r.items] == ["physical_therapy", "acupuncture"]
    assert [i.quantity for i in r.items] == [6, 6]
    assert [i.frequency for i in r.items] == [None, None]
    assert r.items[0].body_regions == ["cervical", "thoracic", "lumbar"] == r.items[1].body_regions
    assert r.items[0].claims_administrator_guideline == "The Claims Administrator did not cite any medical evidence for its decision."
    assert r.items[0].maximus_guideline == "Decision based on MTUS Chronic Pain Treatment Guidelines Physical Therapy, pages 98-99."
    assert [(g.name, g.pages) for g in r.items[0].guideline_sources] == [("MTUS Chronic Pain", "98-99")]
    assert [g.name for g in r.items[1].guideline_sources] == ["MTUS Acupuncture"]
    assert r.items[0].rationale.startswith("Physical therapy is considered medically necessary")
    assert r.items[0].rationale.endswith("lumbar spine is not medically necessary and appropriate.")
    assert r.items[1].rationale.startswith("Current clinical exam show no specific physical impairments")
    assert r.items[1].rationale.endswith("Cervical, Thoracic and Lumbar spine is not medically necessary and appropriate.")
    assert "transition_to_home_program" in r.items[0].denial_reasons
    assert "no_functional_improvement" in r.items[1].denial_reasons


def test_seed_004_header_block(seeds):
    _, r = _rec(seeds["004"])
    assert r.layout == ["header"]
    assert r.case_number == "CM14-0095145"
    assert (r.date_assigned, r.date_of_injury, r.decision_date, r.ur_denial_date, r.application_received) == (
        "2014-07-25", "2009-09-21", "2014-12-19", "2014-06-05", "2014-06-23")
    assert r.priority == "Standard"
    assert _quote(r, "application_received") == "06/23/2014"
    assert _quote(r, "decision_date") == "12/19/2014"
    # the credentials sentence is redacted in this letter: nothing may be invented
    assert r.reviewer.specialties == [] and r.reviewer.license_states == []
    assert (r.claimant.age, r.claimant.sex) == (57, "male")
    assert r.diagnoses == ["cervical spinal stenosis"]
    assert {s.date for s in r.surgeries} == {"2013-09-03", "2013-09-30"}  # the letter gives both dates
    assert all(s.body_region == "cervical" and "fusion" in s.procedure for s in r.surgeries)
    assert "25 sessions of physical therapy" in r.prior_treatments and "medications" in r.prior_treatments
    it = r.items[0]
    assert it.request == "Eight (8) Additional Physical Therapy sessions, Cervical"
    assert (it.decision, it.category, it.quantity, it.body_regions) == ("Upheld", "physical_therapy", 8, ["cervical"])
    assert _quote(r, "items[0].quantity") == "Eight (8)"
    assert it.claims_administrator_guideline == "Decision based on MTUS Postsurgical Treatment Guidelines."
    assert it.maximus_guideline == "Decision based on MTUS Chronic Pain Treatment Guidelines Physical Medicine Page(s): 98-99."
    assert [(g.name, g.pages, g.cited_by) for g in it.guideline_sources] == [
        ("MTUS Post-Surgical", None, "claims_administrator"), ("MTUS Chronic Pain", "98-99", "maximus")]
    # a page-break gap inside the rationale leaves no trace in the value
    assert "given frequency should be tapered and transition" in it.rationale
    assert it.rationale.endswith("for the cervical spine is not medically necessary.")
    assert "transition_to_home_program" in it.denial_reasons
