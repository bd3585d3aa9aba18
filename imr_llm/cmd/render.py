"""Terminal rendering of answers (rich).

Everything that comes from letters, records, questions or file names is passed as ``Text``, never
as markup: rich would otherwise treat "[letter_0001 #1]" or "text[start:end]" as a style tag and
silently drop it, and a citation marker or a quote must never vanish from the screen.
"""
from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..query.answer import AnswerResult


def render(res: AnswerResult) -> None:
    con = Console()
    con.print(Panel(Text(res.answer), title=Text(res.question),
                    subtitle=Text(f"mode: {res.mode} · model: {res.model}"), expand=True))
    if res.letters:
        t = Table("letter", "item", "decision", "category", "request", "file", title="matching items")
        for L in res.letters:
            for it in L["items"]:
                t.add_row(*(Text(str(x or "")) for x in (L["cite_id"], it["item"], it["decision"], it["category"],
                                                         (it["request"] or "")[:60], L["source_path"])))
        con.print(t)
    if res.citations:
        t = Table("citation", "file", "offsets", "quote", title=Text("sources (open the file; text[start:end] == quote)"))
        for c in res.citations:
            t.add_row(Text(c.marker), Text(c.source_path), f"{c.start}-{c.end}", Text(" ".join(c.quote.split())[:120]))
        con.print(t)
    for r in res.removed:
        con.print(Text.assemble(("removed unverifiable citation: ", "yellow"), str(r)))
