"""An IMR letter in a layout the parser does not know: with a model, its items come from the model,
and only what the letter supports is kept (grounding), marked as model-derived."""
from __future__ import annotations

from pathlib import Path

import pytest

from imr_llm.extract.answers import FreeItem, FreeItems
from imr_llm.extract.assemble import analyse, assemble
from imr_llm.core.ground import check_evidence, ungrounded_values
from imr_llm.core.load import read_letter

LETTER = """MAXIMUS FEDERAL SERVICES, INC.
Independent Medical Review
IMR DECISION(S) AND RATIONALE(S)

Issue 1: Physical therapy 2 times a week for 6 weeks for the lumbar spine.
The requested treatment is not medically necessary. The records show no functional improvement.

Issue 2: MRI of the right knee.
The requested MRI of the right knee is medically necessary and appropriate given new instability.
"""


@pytest.fixture
def letter(tmp_path):
    p = tmp_path / "family2.txt"
    p.write_text(LETTER)
    return read_letter(p)


def test_model_items_of_an_unknown_layout_are_kept_only_where_the_letter_says_them(letter):
    lay = analyse(letter)
    assert "unknown_layout" in lay.features and not lay.items
    # What a model answered, right and wrong (hand-written inputs to the grounding layer):
    answer = FreeItems(items=[
        FreeItem(request="Physical therapy 2 times a week for 6 weeks for the lumbar spine", decision="Upheld",
                 decision_quote="The requested treatment is not medically necessary."),
        FreeItem(request="MRI of the right knee", decision="Overturned",
                 decision_quote="The requested MRI of the right knee is medically necessary and appropriate given new instability."),
        FreeItem(request="Acupuncture 6 sessions", decision="Upheld",  # not in the letter
                 decision_quote="The requested treatment is not medically necessary."),
        FreeItem(request="MRI of the right knee", decision="Upheld",  # the quoted sentence says the opposite
                 decision_quote="The requested MRI of the right knee is medically necessary and appropriate given new instability."),
    ])
    rec = assemble(letter, lay, free=answer)
    assert [(i.request, i.decision, i.category, i.quantity, i.body_regions) for i in rec.items] == [
        ("Physical therapy 2 times a week for 6 weeks for the lumbar spine", "Upheld", "physical_therapy", 12, ["lumbar"]),
        ("MRI of the right knee", "Overturned", "imaging", None, ["knee"])]
    assert any(f.startswith("model_derived_items: 2 item(s)") for f in rec.flags)
    assert any(f.startswith("unknown_layout") for f in rec.flags)
    dropped = [e for e in rec.evidence if e.status == "not_found"]
    assert len(dropped) == 2 and any("not in the letter" in (e.value or "") or "not found" in (e.value or "") for e in dropped)
    assert any("does not say Upheld" in (e.value or "") for e in dropped)
    assert all(e.origin == "llm" for e in rec.evidence if e.field.endswith((".request", ".decision")))
    assert not check_evidence(rec, letter.text) and not ungrounded_values(rec)


@pytest.mark.llm
def test_the_bundled_model_reads_an_unknown_layout_and_grounding_holds(local_model, tmp_path):
    """The real local model on the same letter: whatever it returns, every kept item stands in the letter."""
    import json

    from typer.testing import CliRunner

    from imr_llm.cli import app

    p = tmp_path / "family2.txt"
    p.write_text(LETTER)
    res = CliRunner().invoke(app, ["extract", str(p), "--model", f"llama-cpp:{local_model}", "--out", "o.jsonl"])
    assert res.exit_code == 0, res.output
    rec = json.loads(Path("o.jsonl").read_text())
    text = read_letter(p).text
    for ev in rec["evidence"]:
        if ev["status"] != "not_found":
            assert text[ev["start"]:ev["end"]] == ev["quote"]
    assert (len(rec["items"]) > 0) == any(f.startswith("model_derived_items") for f in rec["flags"])
    assert rec["usage"]["calls"] >= 1 and rec["usage"]["prompt_version"] == "unknown-layout-v1"
