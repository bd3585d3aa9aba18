"""Charts of a selection, rendered on the server as SVG by pygal (no JavaScript, nothing fetched)."""
from __future__ import annotations

import pygal
from pygal.style import CleanStyle


def _chart(kind, title: str):
    return kind(js=[], style=CleanStyle, title=title, show_legend=False, width=640, height=300,
                explicit_size=True, x_label_rotation=30, truncate_label=18, print_values=False)


def overturn_by_category(res: dict) -> bytes:
    """Overturn rate (%) per category of the selection."""
    groups = [g for g in res["groups"] if g["key"].get("category")]
    c = _chart(pygal.Bar, "Overturn rate by category (%)")
    c.x_labels = [f"{g['key']['category']} ({g['items']})" for g in groups]
    c.add("overturned %", [round(100 * (g["overturn_rate"] or 0), 1) for g in groups])
    return c.render()


def items_by_month(res: dict) -> bytes:
    """Disputed items per decision month, upheld and overturned stacked."""
    groups = sorted((g for g in res["groups"] if g["key"].get("decision_month")), key=lambda g: g["key"]["decision_month"])
    c = _chart(pygal.StackedBar, "Items by decision month")
    c.x_labels = [g["key"]["decision_month"] for g in groups]
    c.add("upheld", [g["upheld"] for g in groups])
    c.add("overturned", [g["overturned"] for g in groups])
    return c.render()
