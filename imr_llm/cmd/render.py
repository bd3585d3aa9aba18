"""Terminal rendering of answers (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ..answer import AnswerResult


def render(res: AnswerResult) -> None:
    con = Console()
    con.print(Panel(res.answer, title=f"{res.question}", subtitle=f"mode: {res.mode} · filters: {res.filters} · model: {res.model}",
                    expand=True))
    if res.letters:
        t = Table("letter", "item", "decision", "category", "request", "file", title="matching items")
        for L in res.letters:
            for it in L["items"]:
                t.add_row(L["cite_id"], str(it["item"]), it["decision"], it["category"], it["request"][:60], L["source_path"])
        con.print(t)
    if res.citations:
        t = Table("citation", "file", "offsets", "quote", title="sources (open the file; text[start:end] == quote)")
        for c in res.citations:
            t.add_row(c.marker, c.source_path, f"{c.start}-{c.end}", " ".join(c.quote.split())[:120])
        con.print(t)
    for r in res.removed:
        con.print(f"[yellow]removed unverifiable citation:[/yellow] {r}")
