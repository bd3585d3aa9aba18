"""Helpers shared by commands: one-line errors, settings, console."""
from __future__ import annotations

import sys
from typing import NoReturn

import typer

from ..config import ConfigError, Settings, redact, settings


def die(msg: str, code: int = 2) -> NoReturn:
    print(f"error: {redact(msg)}", file=sys.stderr)
    raise typer.Exit(code)


def get_settings(model: str | None, local_only: bool = False, need_key: bool = True) -> Settings:
    try:
        return settings(model, local_only or None, need_key)
    except ConfigError as e:
        die(str(e))


def notice(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def start_provider(s: Settings, debug: bool = False):
    """The model provider ``s`` names (None for none), or one line saying why it cannot start."""
    if s.provider == "none":
        return None
    from ..providers.llm import Provider

    try:
        return Provider(s)
    except Exception as e:  # llama-cpp-python not installed, a model file that will not load...
        if debug:
            import traceback

            traceback.print_exc()
        die(f"cannot start model {s.label}: {type(e).__name__}: {str(e)[:160]}")
