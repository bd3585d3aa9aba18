"""`imr stats`: exact counts and overturn rates (95% Wilson interval) by group, over the index."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .common import die, get_settings


def stats(
    query: Optional[str] = typer.Argument(None, help="filters in words, read like `imr ask` reads them: 'opioid requests in 2017'"),
    by: List[str] = typer.Option([], "--by", help="group by FIELD (repeatable): category, drug_class, body_region, decision_year, "
                                 "decision_month, reviewer_specialty, dwc_specialty, license_state, guideline_source, denial_reason, "
                                 "partial_authorization, after_surgery, fusion, dwc_category, dwc_subcategory, case_outcome"),
    filter_: Optional[str] = typer.Option(None, "--filter", help="filters as key=value,... (fields of `imr ask --filter`)"),
    as_json: bool = typer.Option(False, "--json"),
    as_csv: bool = typer.Option(False, "--csv"),
) -> None:
    """Items, letters, upheld, overturned and the overturn rate with its 95% interval, per group."""
    from ..core.filters import FilterError
    from ..index import Index, IndexProblem
    from ..query.stats import stats_for

    s = get_settings(None)
    if s.env.server_url:
        from ..query.remote import RemoteError, remote_get

        try:
            res = remote_get(s.env.server_url, s.env.serve_secret(), "/api/stats",
                             [("query", query or ""), ("filter", filter_ or "")] + [("by", b) for b in by], "total", s.env.timeout)
        except RemoteError as e:
            die(str(e))
    else:
        try:
            res = stats_for(Index(s.data_dir, embedder=None), query, by, filter_)
        except (IndexProblem, FilterError, ValueError) as e:
            die(str(e))
    if as_json:
        print(json.dumps(res, indent=2))
        return
    if as_csv:
        w = csv.writer(sys.stdout)
        w.writerow(by + ["items", "letters", "upheld", "overturned", "overturn_rate", "ci95_low", "ci95_high"])
        for g in res["groups"] or [{"key": {}, **res["total"]}]:
            ci = g["ci95"] or (None, None)
            w.writerow([g["key"].get(b) for b in by] + [g["items"], g["letters"], g["upheld"], g["overturned"], g["overturn_rate"], *ci])
        return
    render(res)


def render(res: dict) -> None:
    con = Console()
    t_ = res["total"]
    head = f"{t_['items']} items in {t_['letters']} letters; filters: {res['filters']['sentence']}"
    if res.get("unused_words"):
        head += f"; not used from the query: {', '.join(res['unused_words'])}"
    t = Table(*res["by"], "items", "letters", "upheld", "overturned", "overturn rate (95% CI)", "", "letters behind it",
              title=Text(head))
    rows = res["groups"] if res["by"] else [{"key": {}, **t_}]
    for g in rows:
        rate = g["overturn_rate"]
        ci = g["ci95"]
        shown = "-" if rate is None else f"{rate:.1%} ({ci[0]:.0%}-{ci[1]:.0%})" + (" thin" if g["thin"] else "")
        bar = "█" * int(round((rate or 0) * 20))
        t.add_row(*(Text(str(g["key"].get(b))) for b in res["by"]), str(g["items"]), str(g["letters"]), str(g["upheld"]),
                  str(g["overturned"]), shown, bar, Text(" ".join(g["cited"])))
    con.print(t)
    con.print(Text(res["note"] + "; 'thin': fewer than 10 items, the interval says more than the rate."))


def export(
    out: Path = typer.Argument(..., help="folder for items.* and letters.*"),
    parquet: bool = typer.Option(False, "--parquet", help="Parquet instead of CSV (needs pyarrow: pip install 'imr-llm[analysis]')"),
) -> None:
    """The indexed records as two tables: items (one row per disputed item) and letters."""
    from ..query.export import write
    from ..index import Index, IndexProblem

    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            die("--parquet needs pyarrow: pip install 'imr-llm[analysis]' (or export CSV without --parquet)")
    s = get_settings(None)
    try:
        idx = Index(s.data_dir, embedder=None)
    except IndexProblem as e:
        die(str(e))
    for name, path in write(idx.store, out, parquet).items():
        print(f"{name}: {path}")
