"""The naive baseline of benchmark target 3: the whole letter and the whole record schema in one
call; no layout parser, no rules, no grounding. Measured against ``imr extract`` on the same
letters, the same model and the same scorer (``evaluate.compare``):

    python -m imr_llm.bench naive --model llama-cpp:$(imr model path) --only '00*' --out naive.json
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pydantic import Field, create_model

from ..extract.prompts import read_prompt
from ..core.models import DecisionRecord, Item

PROMPT_FILE = "naive_baseline_v1.md"


# The record's content fields (not evidence, usage, flags, file hashes or the layout's verbatim
# summary, which no model needs to produce), with the record's own types and list bounds; items
# gets a bound too, or a small model loops inside the list until max_tokens.
_CONTENT = ("case_number", "date_assigned", "date_of_injury", "decision_date", "ur_denial_date", "application_received",
            "priority", "reviewer", "claimant", "diagnoses", "surgeries", "prior_treatments")
NaiveRecord = create_model(
    "NaiveRecord",
    __doc__="""The record's content fields (not evidence, usage, flags or file hashes, which no model can
    know), with the same types and list bounds as ``DecisionRecord``.""",
    **{k: (DecisionRecord.model_fields[k].annotation, DecisionRecord.model_fields[k]) for k in _CONTENT},
    items=(list[Item], Field(default_factory=list, max_length=30)),
)


def naive_prompt() -> str:
    return read_prompt(PROMPT_FILE)


def naive_messages(letter_text: str) -> list[dict]:
    return [{"role": "system", "content": naive_prompt()}, {"role": "user", "content": letter_text}]


def run_naive(suite: Path, s, only: str | None = None, max_tokens: int = 4096) -> dict:
    """Accuracy and tokens of the naive call on the suite's gold letters, scored like ``imr eval``."""
    from ..evaluate import FIELDS, Counts, compare, letters_of, load_gold
    from ..providers.llm import LLMError, Provider
    from ..core.load import read_letter

    gold = load_gold(suite)
    paths = letters_of(suite, gold, only)
    provider = Provider(s)
    fields: dict[str, Counts] = {}
    failures: list[str] = []
    tin = tout = dec_ok = dec_n = 0
    t0 = time.monotonic()

    async def one(text: str):
        return await provider.complete(naive_messages(text), NaiveRecord, max_tokens=max_tokens)

    for p in paths:
        letter = read_letter(p)
        try:
            got, usage = asyncio.run(one(letter.text))
            rec = {"letter_id": p.stem, **got.model_dump(mode="json")}
            tin, tout = tin + usage.input_tokens, tout + usage.output_tokens
        except LLMError as e:
            failures.append(f"{p.name}: {e}")
            rec = {"letter_id": p.stem, "items": []}
            if e.usage:
                tin, tout = tin + e.usage.input_tokens, tout + e.usage.output_tokens
        counts, _, (ok, n) = compare(rec, gold[p.stem])
        for k, c in counts.items():
            fields.setdefault(k, Counts()).add(c)
        dec_ok, dec_n = dec_ok + ok, dec_n + n
    micro = Counts()
    for c in fields.values():
        micro.add(c)
    n = len(paths) or 1
    return {"kind": "naive-extraction", "model": s.label, "letters": len(paths), "failed": failures,
            "wall_s": round(time.monotonic() - t0, 1), "micro": micro.prf(),
            "decision_accuracy": round(dec_ok / dec_n, 4) if dec_n else None,
            "fields": {k: fields[k].prf() for k in FIELDS if k in fields},
            "input_tokens_per_letter": tin // n, "output_tokens_per_letter": tout // n}


def cmd_naive(a) -> None:
    from ..config import settings
    from ..evaluate import run_extraction

    import tempfile

    s = settings(model=a.model)
    s.data_dir = Path(tempfile.mkdtemp(prefix="imr-naive-"))  # a cold cache: both sides really call the model
    suite = Path(a.suite)
    naive = run_naive(suite, s, a.only)
    ours = run_extraction(suite, s, concurrency=1, only=a.only).report
    n = ours["letters"] or 1
    ours_sum = {"micro": ours["micro"], "decision_accuracy": ours["decision_accuracy"],
                "input_tokens_per_letter": ours["input_tokens"] // n, "output_tokens_per_letter": ours["output_tokens"] // n,
                "wall_s": ours["wall_s"], "failed": ours["failed"]}
    out = {"model": s.label, "letters": naive["letters"], "naive": naive, "ours": ours_sum,
           "input_ratio": round(ours_sum["input_tokens_per_letter"] / max(1, naive["input_tokens_per_letter"]), 3),
           "output_ratio": round(ours_sum["output_tokens_per_letter"] / max(1, naive["output_tokens_per_letter"]), 3)}
    print(f"{'':10} {'micro F1':>9} {'decisions':>9} {'in tok/letter':>14} {'out tok/letter':>15} {'wall s':>7}")
    for name, r in (("naive", naive), ("imr-llm", ours_sum)):
        print(f"{name:10} {r['micro']['f1']:>9.3f} {r['decision_accuracy'] or 0:>9.3f} {r['input_tokens_per_letter']:>14} "
              f"{r['output_tokens_per_letter']:>15} {r['wall_s']:>7}")
    print(f"input {out['input_ratio']:.0%} and output {out['output_ratio']:.0%} of the naive call's tokens")
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
