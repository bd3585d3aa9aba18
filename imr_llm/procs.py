"""Temporary files and folders named ``…-PID``: whether the process that left one is still alive,
and removing those a killed run left behind."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: Path, pattern: str) -> None:
    """Remove what matches ``pattern`` (ending in ``-PID``) in ``folder`` whose process is gone."""
    for stale in folder.glob(pattern):
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
