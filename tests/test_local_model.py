"""The real local path: the bundled 0.5B GGUF through llama-cpp-python, in process (~1 min)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imr_llm.cli import app
from imr_llm.core.ground import check_evidence, ungrounded_values
from imr_llm.core.load import read_letter
from imr_llm.core.models import DecisionRecord

from .conftest import SEEDS

pytestmark = pytest.mark.llm


def test_small_local_model_extracts_a_seed_letter(local_model):
    res = CliRunner().invoke(app, ["extract", str(SEEDS["000"]), "--model", f"llama-cpp:{local_model}", "--out", "r.jsonl"])
    assert res.exit_code == 0, res.output
    (line,) = Path("r.jsonl").read_text().splitlines()
    rec = DecisionRecord.model_validate_json(line)
    text = read_letter(SEEDS["000"]).text
    assert rec.usage.provider == "llama-cpp" and rec.usage.calls >= 1 and rec.usage.output_tokens > 0
    assert check_evidence(rec, text) == []  # every kept value sits at its offsets
    assert ungrounded_values(rec) == []  # nothing without evidence survived
    assert [i.decision for i in rec.items] == ["Upheld"]  # decisions are the letter's
    # 000 states neither age nor sex: whatever the model proposed, nothing may be kept
    assert rec.claimant.age is None and rec.claimant.sex is None
    llm_ev = [e for e in rec.evidence if e.origin == "llm"]
    for e in llm_ev:
        if e.status == "not_found":
            assert e.value  # dropped values are reported with what was proposed
