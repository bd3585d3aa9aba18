"""`imr config`: every setting, where it comes from, its effective value (secrets masked)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..config import ConfigError, describe
from .common import die


def config() -> None:
    """Print the effective settings (environment and .env; IMR_ prefix) with secrets masked."""
    try:
        rows = describe()
    except ConfigError as e:
        die(str(e))
    t = Table("section", "variable", "value", "what it does", title="imr settings (environment, then .env)")
    for section, name, value, desc in rows:
        t.add_row(section, name, Text(value), Text(desc))
    Console().print(t)
