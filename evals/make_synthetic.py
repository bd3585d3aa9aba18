"""Write the synthetic part of the eval suite: letters (txt + a few PDFs) and their gold records.

    python evals/make_synthetic.py

Every file is marked synthetic in its name and its gold. Gold comes from the construction
parameters of each letter (imr_llm/bench/corpus.py), not from the parser under test.
Deterministic: re-running rewrites identical files.
"""
from __future__ import annotations

import json
from pathlib import Path

from imr_llm.bench.corpus import build

HERE = Path(__file__).parent
SPECS = [
    ("pt_overturned_header", dict(seed=101, n_items=1, outcomes=["Overturned"], categories=["physical_therapy"], layout="header", credentials="block")),
    ("meds_mixed_three", dict(seed=102, n_items=3, outcomes=["Upheld", "Overturned", "Upheld"], categories=["medication"], layout="header", credentials="block")),
    ("mri_texas_sentence", dict(seed=103, n_items=1, categories=["imaging"], layout="no_header", credentials="sentence", state="Texas", outcomes=["Upheld"])),
    ("esi_overturned", dict(seed=104, n_items=1, categories=["injection"], outcomes=["Overturned"], layout="header", credentials="block")),
    ("facet_arizona", dict(seed=105, n_items=1, categories=["injection"], outcomes=["Upheld"], layout="header", credentials="block", state="Arizona")),
    ("shoulder_surgery", dict(seed=106, n_items=1, categories=["surgery"], outcomes=["Upheld"], layout="no_header", credentials="block")),
    ("tens_dme", dict(seed=107, n_items=1, categories=["dme"], outcomes=["Upheld"], layout="header", credentials="redacted")),
    ("cbt_psych_overturned", dict(seed=108, n_items=1, categories=["psych"], outcomes=["Overturned"], layout="no_header", credentials="sentence")),
    ("chiro_page_header", dict(seed=109, n_items=1, categories=["chiropractic"], outcomes=["Upheld"], layout="header", credentials="block", page_header_in_rationale=True)),
    ("six_items_mixed", dict(seed=110, n_items=6, outcomes=["Upheld", "Upheld", "Overturned", "Upheld", "Overturned", "Upheld"], layout="header", credentials="block")),
    ("acupuncture_nevada", dict(seed=111, n_items=2, categories=["acupuncture", "physical_therapy"], outcomes=["Upheld", "Upheld"], layout="no_header", credentials="sentence", state="Nevada")),
    ("opioid_upheld_no_header", dict(seed=112, n_items=1, categories=["medication"], outcomes=["Upheld"], layout="no_header", credentials="block")),
    ("pt_after_fusion", dict(seed=113, surgery_index=0, n_items=2, categories=["physical_therapy"], outcomes=["Upheld", "Upheld"], layout="header", credentials="block")),
    ("imaging_overturned_ny", dict(seed=114, n_items=1, categories=["imaging"], outcomes=["Overturned"], layout="header", credentials="block", state="New York")),
    ("surgery_and_pt_mixed", dict(seed=115, n_items=2, categories=["surgery", "physical_therapy"], outcomes=["Overturned", "Upheld"], layout="header", credentials="sentence")),
    ("dme_and_meds", dict(seed=116, n_items=3, categories=["dme", "medication"], outcomes=["Upheld", "Overturned", "Upheld"], layout="no_header", credentials="block")),
    ("psych_upheld_florida", dict(seed=117, n_items=1, categories=["psych"], outcomes=["Upheld"], layout="header", credentials="block", state="Florida")),
    ("injections_four", dict(seed=118, n_items=4, categories=["injection", "imaging"], outcomes=["Upheld", "Upheld", "Overturned", "Upheld"], layout="header", credentials="block")),
    ("chiro_overturned_sentence", dict(seed=119, n_items=1, categories=["chiropractic"], outcomes=["Overturned"], layout="no_header", credentials="sentence")),
    ("topical_compound", dict(seed=120, n_items=2, categories=["medication"], outcomes=["Upheld", "Upheld"], layout="header", credentials="redacted", page_header_in_rationale=True)),
    ("acupuncture_overturned", dict(seed=121, n_items=1, categories=["acupuncture"], outcomes=["Overturned"], layout="header", credentials="block")),
    ("prompt_injection", dict(seed=122, n_items=2, categories=["physical_therapy", "medication"], outcomes=["Upheld", "Upheld"], layout="header", credentials="block", injection=True)),
    ("five_items_outside_ca", dict(seed=123, n_items=5, outcomes=["Upheld", "Overturned", "Upheld", "Upheld", "Upheld"], layout="no_header", credentials="block", state="Texas")),
    ("mri_pt_header", dict(seed=124, n_items=2, categories=["imaging", "physical_therapy"], outcomes=["Upheld", "Overturned"], layout="header", credentials="block")),
]
PDF = {"meds_mixed_three", "six_items_mixed", "chiro_page_header", "pt_after_fusion"}


def main() -> None:
    letters, gold_dir = HERE / "letters", HERE / "gold"
    gold_dir.mkdir(exist_ok=True)
    for n, (name, kw) in enumerate(SPECS, 1):
        stem = f"synthetic_{n:02d}_{name}"
        text, gold = build(**kw)
        gold.update(letter_id=stem, _checked="synthetic: gold from the letter's construction parameters (imr_llm/bench/corpus.py); spot-checked by hand",
                    synthetic=True)
        if name in PDF:
            from imr_llm.bench.pdfs import text_pdf  # fpdf2 writer, also used by the tests

            text_pdf(text, letters / f"{stem}.pdf")
        else:
            (letters / f"{stem}.txt").write_text(text)
        (gold_dir / f"{stem}.json").write_text(json.dumps(gold, indent=1) + "\n")
    print(f"wrote {len(SPECS)} synthetic letters and gold files")


if __name__ == "__main__":
    main()
