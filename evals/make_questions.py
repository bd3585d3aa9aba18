"""Write evals/questions.jsonl: precedent, filtering and counting questions over the eval corpus.

Expected letters and counts are computed from the gold records (never from the tool's output).
    python evals/make_questions.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
gold = {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "gold").glob("*.json"))}


def items(pred):
    return [(lid, it) for lid, g in gold.items() for it in g["items"] if pred(g, it)]


def letters(pred):
    return sorted({lid for lid, _ in items(pred)})


fusion = lambda g: any("fusion" in s["procedure"].lower() for s in g.get("surgeries", []))
outside = lambda g: bool(g["reviewer"]["license_states"]) and any(s != "California" for s in g["reviewer"]["license_states"])
all_ids = set(gold)
# The real DWC letters' gold checks items, header, reviewer and claimant, not surgeries: whether they
# had a fusion is unknown, so fusion questions neither require nor forbid them.
with_surgeries = {lid for lid, g in gold.items() if "surgeries" in g}
Q = []


def why(q, pred, broad, facts=(), k=6, among=None):
    """must_cite: letters with an item matching ``pred``; must_not_cite: letters with none matching ``broad``
    (``among``: only letters whose gold can say, e.g. those with hand-checked surgeries)."""
    must = letters(pred)
    Q.append({"question": q, "must_cite": must, "must_not_cite": sorted((among or all_ids) - set(letters(broad))),
              "facts": list(facts), "k": max(k, len(must))})


def count(q, pred):
    Q.append({"question": q, "count": len(items(pred))})


def listing(q, pred):
    must = letters(pred)
    Q.append({"question": q, "must_cite": must, "must_not_cite": sorted(all_ids - set(must))})


def cat(c, d=None):
    return lambda g, it: it["category"] == c and (d is None or it["decision"] == d)


why("why were physical therapy requests upheld after spinal fusion surgery?",
    lambda g, it: fusion(g) and it["category"] == "physical_therapy" and it["decision"] == "Upheld", lambda g, it: fusion(g),
    facts=["physical therapy"], among=with_surgeries)
why("on what grounds were facet blocks denied?", lambda g, it: "facet" in it["request"].lower() and it["decision"] == "Upheld",
    cat("injection"), facts=["facet"])
why("why were acupuncture requests denied?", cat("acupuncture", "Upheld"), cat("acupuncture"), facts=["acupuncture"])
why("why were MRI requests upheld?", cat("imaging", "Upheld"), cat("imaging"), facts=["MRI"])
why("why was psychotherapy overturned?", cat("psych", "Overturned"), cat("psych"), facts=["medically necessary"])
why("why were TENS unit requests denied?", cat("dme", "Upheld"), cat("dme"), facts=["TENS"])
why("why were chiropractic requests upheld?", cat("chiropractic", "Upheld"), cat("chiropractic"), facts=["manipulation"])
count("How many acupuncture requests were overturned?", lambda g, it: it["category"] == "acupuncture" and it["decision"] == "Overturned")
count("How many disputed items were overturned?", lambda g, it: it["decision"] == "Overturned")
count("How many physical therapy requests were upheld?", lambda g, it: it["category"] == "physical_therapy" and it["decision"] == "Upheld")
count("How many medication requests were upheld?", lambda g, it: it["category"] == "medication" and it["decision"] == "Upheld")
count("How many imaging requests were overturned?", lambda g, it: it["category"] == "imaging" and it["decision"] == "Overturned")
count("How many disputed items concerned the lumbar spine?", lambda g, it: "lumbar" in it["body_regions"])
count("How many chiropractic requests were upheld?", lambda g, it: it["category"] == "chiropractic" and it["decision"] == "Upheld")
count("How many opioid requests were upheld?", lambda g, it: it.get("drug_class") == "opioid" and it["decision"] == "Upheld")
listing("Which decisions came from reviewers licensed outside California?", lambda g, it: outside(g))
listing("Which letters had reviewers licensed in Texas?", lambda g, it: "Texas" in g["reviewer"]["license_states"])
listing("Which letters overturned injection requests?", lambda g, it: it["category"] == "injection" and it["decision"] == "Overturned")
(HERE / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in Q))
print(f"wrote {len(Q)} questions")
