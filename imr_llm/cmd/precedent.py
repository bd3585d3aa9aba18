"""`imr precedent "REQUEST"`: past decisions on requests like this one."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.text import Text

from .common import die, get_settings


def precedent(
    request: Optional[str] = typer.Argument(None, help='the request as a UR letter words it: "Physical therapy 12 sessions lumbar spine"'),
    letter: Optional[Path] = typer.Option(None, "--letter", help="a UR denial letter (.txt/.pdf): its first 'request for ...' is used"),
    after_surgery: bool = typer.Option(False, "--after-surgery", help="only claimants with surgery in their history"),
    fusion: bool = typer.Option(False, "--fusion", help="only claimants with a prior fusion"),
    region: List[str] = typer.Option([], "--region", help="body region(s), instead of those named in the request"),
    k: int = typer.Option(5, "--k", min=1, max=50, help="closest letters to show"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """How many similar past items, the overturn rate with its 95% interval, recurring reasons and
    guidelines, and the closest letters with the sentence that decided them (cited by offsets)."""
    from ..core.filters import FilterError, canonical_value
    from ..index import Index, IndexProblem
    from ..core.load import LetterError, read_letter
    from ..query.precedent import find

    if letter:
        try:
            text = read_letter(letter).text
        except LetterError as e:
            die(str(e))
        m = re.search(r"request(?:ed)?\s+(?:for\s+(?:authorization\s+(?:of|for)\s+)?)?(?P<r>[^.;\n]{5,160})", text, re.IGNORECASE)
        if not m:
            die(f"{letter}: no 'request for ...' found; give the request as text instead")
        request = m.group("r").strip()
    if not request or not request.strip():
        die("give the request as text, or --letter FILE")
    s = get_settings(None)
    if s.env.server_url:  # the served index answers (a --letter is read here; its request is sent)
        from ..query.remote import RemoteError, remote_get

        params = [("request", request), ("k", str(k)), ("after_surgery", "1" if after_surgery else ""),
                  ("fusion", "1" if fusion else "")] + [("region", r) for r in region]
        try:
            res = remote_get(s.env.server_url, s.env.serve_secret(),
                             "/api/precedent", params, "precedents", s.env.timeout)
        except RemoteError as e:
            die(str(e))
    else:
        try:
            regions = [canonical_value("region", r) for r in region]
            res = find(Index(s.data_dir, embedder=None), request, after_surgery, fusion, regions or None, k)
        except (IndexProblem, FilterError) as e:
            die(str(e))
    if as_json:
        print(json.dumps(res, indent=2))
        return
    con = Console()
    it = res["request"]
    con.print(Text(f"Request read as: {it['category']}" + (f", {it['drug']} ({it['drug_class']})" if it["drug"] else "")
                   + (f", quantity {it['quantity']}" if it["quantity"] else "") + (f", {'/'.join(it['body_regions'])}" if it["body_regions"] else "")))
    for st in res["relaxed"]:
        con.print(Text(f"  only {st['items']} past items with {st['filters']}: widened the match"))
    rate = res["overturn_rate"]
    line = (f"{res['matches']} past disputed items in {res['letters']} letters ({res['matched_on']}): {res['overturned']} overturned"
            + (f" = {rate:.1%} (95% CI {res['ci95'][0]:.1%}-{res['ci95'][1]:.1%})" if rate is not None else ""))
    con.print(Text(line, style="bold"))
    if res["thin"]:
        con.print(Text("Thin evidence: few similar items or a wide interval; read the letters, not the rate.", style="yellow"))
    if res["reasons"]:
        con.print(Text("Recurring denial reasons: " + "; ".join(f"{r['reason']} ({r['items']})" for r in res["reasons"])))
    if res["guidelines"]:
        con.print(Text("Guidelines applied: " + "; ".join(f"{g['guideline']} ({g['items']})" for g in res["guidelines"])))
    for p in res["precedents"]:
        con.print(Text(f"[{p['case_number']} #{p['item']}] {p['request']} — {p['decision']}"))
        con.print(Text(f"    “{' '.join(p['quote'].split())}”  ({p['source_path']} {p['start']}-{p['end']})"))
