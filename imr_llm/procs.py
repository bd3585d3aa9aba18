"""This process's helpers: temporary files and folders named ``…-PID`` (whether the process that
left one is still alive, removing those a killed run left behind) and its named thread pools."""
from __future__ import annotations

import os
import shutil
import threading
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


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def threads(name: str, n: int = 2):
    """``n`` threads named ``name`` in this process (two by default: this machine's two cores, more
    only contend), made once under a lock: a server's requests ask for them at the same moment."""
    with _POOLS_LOCK:
        if name not in _POOLS:
            from concurrent.futures import ThreadPoolExecutor

            _POOLS[name] = ThreadPoolExecutor(n, thread_name_prefix=name)
        return _POOLS[name]
