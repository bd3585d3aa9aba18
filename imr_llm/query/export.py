"""`imr export`: the indexed records as two tables for analysts (pandas, polars, DuckDB, R):
``items`` (one row per disputed item, the CSV columns of ``imr extract``) and ``letters`` (one row
per letter, every path it came from). CSV always; Parquet with ``pyarrow`` (extra ``analysis``)."""
from __future__ import annotations

import csv
from pathlib import Path

from ..core.models import CSV_COLUMNS, DecisionRecord, csv_rows

LETTER_COLUMNS = ["letter_id", "case_number", "source_path", "paths", "decision_date", "date_assigned", "date_of_injury",
                  "ur_denial_date", "application_received", "priority", "case_outcome", "items", "overturned",
                  "reviewer_specialties", "reviewer_dwc_specialties", "reviewer_license_states", "claimant_age", "claimant_sex",
                  "layout", "flags"]


def tables(store) -> tuple[list[dict], list[dict]]:
    items, letters = [], []
    for js, paths in store.records():
        rec = DecisionRecord.model_validate_json(js)
        items.extend(csv_rows(rec))
        j = "; ".join
        letters.append({
            "letter_id": rec.letter_id, "case_number": rec.case_number, "source_path": rec.source_path,
            "paths": j(paths), "decision_date": rec.decision_date, "date_assigned": rec.date_assigned,
            "date_of_injury": rec.date_of_injury, "ur_denial_date": rec.ur_denial_date,
            "application_received": rec.application_received, "priority": rec.priority, "case_outcome": rec.case_outcome,
            "items": len(rec.items), "overturned": sum(1 for it in rec.items if it.decision == "Overturned"),
            "reviewer_specialties": j(rec.reviewer.specialties), "reviewer_dwc_specialties": j(rec.reviewer.dwc_specialties),
            "reviewer_license_states": j(rec.reviewer.license_states), "claimant_age": rec.claimant.age,
            "claimant_sex": rec.claimant.sex, "layout": j(rec.layout), "flags": j(rec.flags)})
    return items, letters


def write(store, out: Path, parquet: bool) -> dict[str, Path]:
    items, letters = tables(store)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows, cols in (("items", items, CSV_COLUMNS), ("letters", letters, LETTER_COLUMNS)):
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = out / f"{name}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(pa.Table.from_pylist(rows, schema=None) if rows else pa.table({c: [] for c in cols}), tmp)
        else:
            path = out / f"{name}.csv"
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(rows)
        tmp.replace(path)
        written[name] = path
    return written
