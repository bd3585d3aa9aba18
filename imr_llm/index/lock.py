"""One index writer at a time."""
from __future__ import annotations

import os
from pathlib import Path

from .problems import IndexProblem


class WriterLock:
    """An exclusive lock on ``DATA_DIR/index.lock`` held by the one process writing the index
    (released by the OS if that process dies, so a kill -9 never leaves it stuck). Re-entrant
    within one process: a command that opens the index twice does not lock itself out."""

    _held: dict[str, list] = {}  # path -> [file, count]

    def __init__(self, data_dir: Path):
        import fcntl

        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = str((data_dir / "index.lock").resolve())
        self.released = False
        if self.path in self._held:
            self._held[self.path][1] += 1
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise IndexProblem(f"another imr (pid {pid}) is writing the index in {data_dir}; wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._held[self.path] = [f, 1]

    def release(self) -> None:
        if self.released or self.path not in self._held:
            return
        self.released = True
        entry = self._held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del self._held[self.path]

    @staticmethod
    def holder(data_dir: Path) -> str | None:
        """Pid of the process writing the index, or None."""
        import fcntl

        path = data_dir / "index.lock"
        if not path.exists() or str(path.resolve()) in WriterLock._held:
            return None
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                return f.read().strip() or "?"
            fcntl.flock(f, fcntl.LOCK_UN)
        return None
