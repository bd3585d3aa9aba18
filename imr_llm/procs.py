"""Whether the process that left a temporary file or folder is still alive (stale ones are removed)."""
from __future__ import annotations

import os


def pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
