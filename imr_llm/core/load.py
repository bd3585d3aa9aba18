"""Letters in: files, folders and globs to text, plus a normalised view with a map back.

Offsets everywhere in imr-llm refer to ``Letter.text``: the decoded file for ``.txt`` and the
PDF text layer (pages joined by a blank line) for ``.pdf``. ``imr text FILE`` prints exactly that
string, so anyone can check an evidence span by slicing it.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".txt", ".pdf")
PAGE_JOIN = "\n\n"


class LetterError(Exception):
    """A letter that cannot be read; ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Normalized:
    """Text with PDF artefacts removed; ``to_orig`` maps any offset back to the original."""

    text: str
    _norm_starts: list[int]
    _orig_starts: list[int]
    _lengths: list[int]

    def to_orig(self, pos: int) -> int:
        """Original offset of normalised character ``pos`` (separators map to the gap before)."""
        i = bisect_right(self._norm_starts, pos) - 1
        if i < 0:
            return self._orig_starts[0] if self._orig_starts else 0
        delta = pos - self._norm_starts[i]
        if delta < self._lengths[i]:
            return self._orig_starts[i] + delta
        return self._orig_starts[i] + self._lengths[i]

    def span_to_orig(self, start: int, end: int) -> tuple[int, int]:
        if end <= start:
            o = self.to_orig(start)
            return o, o
        return self.to_orig(start), self.to_orig(end - 1) + 1


@dataclass
class Letter:
    path: str
    text: str
    sha256: str  # of the file's bytes
    norm: Normalized = field(repr=False)
    kind: str = "txt"
    notes: list[str] = field(default_factory=list)

    @property
    def text_sha256(self) -> str:
        return hashlib.sha256(self.norm.text.encode()).hexdigest()


# --- page furniture and hyphenation -------------------------------------------------------------

_PAGE_LINE = re.compile(
    r"^\s*(?:(?:page\s+\d+(?:\s+of\s+\d+)?)|(?:-\s*\d+\s*-)|(?:\d+\s*/\s*\d+)"
    r"|(?:[A-Z]{2}\d{2}-\d{6,8}\s*(?:[|,\-–]\s*)?page\s+\d+(?:\s+of\s+\d+)?)"
    r"|(?:page\s+\d+(?:\s+of\s+\d+)?\s*(?:[|,\-–]\s*)?[A-Z]{2}\d{2}-\d{6,8}))\s*$",
    re.IGNORECASE,
)
_KEEP_HYPHEN_PREFIXES = {
    "post", "pre", "non", "self", "well", "re", "anti", "co", "multi", "semi", "sub", "inter",
    "intra", "extra", "over", "under", "long", "short", "follow", "high", "low", "full", "part",
    "half", "left", "right", "bi", "tri", "x", "s", "de", "mid", "cross", "first", "second",
    "third", "one", "two", "three", "four", "six", "year", "day", "week", "month", "time",
}
_WORD = re.compile(r"\S+")


_ODD_SPACE = re.compile(r"\s\s|[^\S ]")


def normalize(text: str, blank_gap: bool = False) -> Normalized:
    """Join PDF line breaks, drop page numbers/headers, fix hyphenation, fold whitespace.

    A line holding only spaces (the PDF exporters' paragraph gap) becomes "\\n"; every other line
    break becomes one space, so a page break inside a sentence leaves no trace. ``blank_gap``: an
    empty line between a sentence end and a capitalised line is a paragraph gap too (text files such
    as ``pdftotext -layout`` output, whose gaps are empty lines; double-spaced text keeps its
    sentences whole). In our own PDF text an empty line is the page join, which never splits. The map is kept
    as linear pieces (a line, or a word where a line has odd spacing), so it costs little.
    """
    return _join(*_pieces(text, blank_gap))


def _pieces(text: str, blank_gap: bool) -> tuple[list[list], list[str]]:
    """The kept pieces of text ([original start, text]) and the separator to put before each."""
    pieces: list[list] = []  # [orig_start, text]
    seps: list[str] = []  # separator placed *before* pieces[i]
    pending = ""
    lowered_text = None
    pos = 0
    for line in text.splitlines(keepends=True):
        start = pos
        pos += len(line)
        content = line.rstrip("\r\n")
        stripped = content.strip()
        if not stripped:
            if content and pieces:  # whitespace-only line with spaces: paragraph gap
                pending = "\n"
            elif blank_gap and not pending and pieces and pieces[-1][1][-1] in ".:?!":
                pending = "\n?"  # an empty line after a sentence: a gap if a new sentence follows
            continue
        if len(stripped) < 80 and _PAGE_LINE.match(stripped):
            continue
        lead = len(content) - len(content.lstrip())
        if _ODD_SPACE.search(stripped):
            line_pieces = [(start + m.start(), m.group()) for m in _WORD.finditer(content)]
            inner = " "
        else:
            line_pieces = [(start + lead, stripped)]
            inner = " "
        for k, (ostart, w) in enumerate(line_pieces):
            if not pieces:
                sep = ""
            elif k == 0:
                sep = pending or " "
                prev = pieces[-1][1]
                if sep == " " and prev.endswith("-") and len(prev) > 1 and prev[-2].isalpha() and w[0].islower():
                    if lowered_text is None:
                        lowered_text = text.lower()
                    sep = _hyphen_join(prev.rsplit(" ", 1)[-1], w.split(" ", 1)[0], lowered_text)
            else:
                sep = inner
            seps.append(sep)
            pieces.append([ostart, w])
        pending = ""
    for i, sep in enumerate(seps):
        if sep == "\n?":
            seps[i] = "\n" if pieces[i][1][:1].isupper() or pieces[i][1][:1].isdigit() else " "
    return pieces, seps


def _join(pieces: list[list], seps: list[str]) -> Normalized:
    out: list[str] = []
    norm_starts: list[int] = []
    orig_starts: list[int] = []
    lengths: list[int] = []
    n = 0
    for (ostart, w), sep in zip(pieces, seps):
        if sep == "DROP-HYPHEN":
            # remove the trailing "-" of the previous piece
            out[-1] = out[-1][:-1]
            lengths[-1] -= 1
            n -= 1
            sep = ""
        out.append(sep)
        n += len(sep)
        out.append(w)
        norm_starts.append(n)
        orig_starts.append(ostart)
        lengths.append(len(w))
        n += len(w)
    return Normalized("".join(out), norm_starts, orig_starts, lengths)


def _hyphen_join(prev: str, nxt: str, lowered: str) -> str:
    """Decide how a word broken at a line end rejoins: keep the hyphen ("") or drop it."""
    left = re.sub(r"^\W+", "", prev[:-1]).lower()
    right = re.sub(r"\W+$", "", nxt).lower()
    tail = left.rsplit("-", 1)[-1]
    if tail in _KEEP_HYPHEN_PREFIXES:
        return ""
    if (left + right) in lowered:
        return "DROP-HYPHEN"
    return ""


# --- reading files --------------------------------------------------------------------------------


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursive) and globs to a sorted, de-duplicated list of letter paths, and one
    line for each input that could not be read (missing path, unreadable folder). Symlinked folders
    are not followed (a link back up the tree would never end); symlinked files are."""
    found: dict[str, Path] = {}
    errors: list[str] = []

    def add(p: Path) -> None:
        if p.suffix.lower() in SUFFIXES:
            try:
                if p.is_file():
                    found.setdefault(str(p.resolve()), p)
            except OSError as e:
                errors.append(f"{p}: cannot read ({e.strerror or e})")

    def walk(top: Path, keep=lambda rel: True) -> None:
        def onerror(e: OSError) -> None:
            errors.append(f"{e.filename}: cannot read folder ({e.strerror or e}); its letters were skipped")
        for root, dirs, files in os.walk(top, onerror=onerror, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                if keep(os.path.relpath(p, top)):
                    add(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            walk(p)
        elif p.exists():
            add(p) if p.suffix.lower() in SUFFIXES else found.setdefault(str(p.resolve()), p)
        elif glob.has_magic(item):
            base = Path(*[part for part in _parts_before_magic(item)]) if _parts_before_magic(item) else Path(".")
            rx = _glob_regex(os.path.relpath(item, base) if base != Path(".") else item)
            before = len(found)
            if base.is_dir():
                walk(base, lambda rel: bool(rx.fullmatch(rel)))
            if len(found) == before:
                errors.append(f"{item}: no letters match this pattern")
        else:
            errors.append(f"{item}: no such file or folder")
    return list(found.values()), errors


def _parts_before_magic(pattern: str) -> list[str]:
    parts = Path(pattern).parts
    out = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        out.append(part)
    return out


def _glob_regex(pattern: str) -> "re.Pattern":
    """A glob (``**`` = any folders, ``*``/``?`` within one name) as a regex over relative paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            out.append(pattern[i:j + 1] if j > i else re.escape(pattern[i]))
            i = j + 1 if j > i else i + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # IMR_MAX_BYTES; callers pass the setting (the core reads no settings)


def read_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The file's bytes, or ``LetterError`` for a missing, empty or over-size file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise LetterError(path, f"cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise LetterError(path, "empty file")
    limit = max_bytes or DEFAULT_MAX_BYTES
    if size > limit:
        raise LetterError(path, f"file too large ({size / 1e6:.1f} MB > {limit / 1e6:.0f} MB limit; set IMR_MAX_BYTES)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise LetterError(path, f"cannot read file ({e.strerror or e})") from None


def read_letter(path: str | Path, data: bytes | None = None, max_bytes: int | None = None) -> Letter:
    """Read one ``.txt`` or ``.pdf`` letter; raise ``LetterError`` with a one-line reason.
    ``data``: the file's bytes when the caller has already read them (``read_bytes``)."""
    path = Path(path)
    if data is None:
        data = read_bytes(path, max_bytes)
    sha = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    if data[:5] == b"%PDF-" or path.suffix.lower() == ".pdf":
        text = _pdf_text(path, data)
        kind = "pdf"
    else:
        text = _decode(path, data, notes)
        kind = "txt"
    if not text.strip():
        raise LetterError(path, "no text (file holds only whitespace)")
    return Letter(str(path), text, sha, normalize(text, blank_gap=kind == "txt" and not _double_spaced(text)), kind, notes)


def _double_spaced(text: str) -> bool:
    """Every other line empty (text copied from a web page or PDF viewer): there an empty line is
    layout, not a paragraph gap."""
    lines = text.splitlines()
    blank = sum(1 for ln in lines if not ln.strip())
    return len(lines) > 10 and blank >= 0.4 * len(lines)


def _decode(path: Path, data: bytes, notes: list[str]) -> str:
    text = _decode_text(path, data, notes)
    nul = text.find("\x00")
    if nul >= 0:  # a NUL past the first 8 KB would otherwise travel into the record
        raise LetterError(path, f"binary or corrupt text (NUL byte at character {nul}); expected a .txt or .pdf letter")
    return text


def _decode_text(path: Path, data: bytes, notes: list[str]) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise LetterError(path, "invalid UTF-16 text") from None
    if b"\x00" in data[:8192]:
        raise LetterError(path, "binary file, not text (NUL bytes); expected a .txt or .pdf letter")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise LetterError(path, "not valid UTF-8 or Windows-1252 text (wrong encoding or binary)") from None
    notes.append("decoded as Windows-1252 (not UTF-8)")
    return text


# DWC posts its letters AES-encrypted with an empty password: pypdf needs cryptography to open them.
_NEEDS_CRYPTO = ("encrypted PDF (empty password) needs the 'cryptography' package: pip install cryptography "
                 "(imr-llm declares it; was it installed without its dependencies?)")


def _pdf_text(path: Path, data: bytes) -> str:
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except DependencyError:
                raise LetterError(path, _NEEDS_CRYPTO) from None
            except Exception:  # pypdf raises several types for unsupported crypto
                ok = 0
            if not ok:
                raise LetterError(path, "password-protected PDF; remove the password first")
        pages = [(p.extract_text() or "") for p in reader.pages]
    except LetterError:
        raise
    except DependencyError:
        raise LetterError(path, _NEEDS_CRYPTO) from None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise LetterError(path, f"unreadable PDF ({type(e).__name__}: {str(e)[:80]})") from None
    text = PAGE_JOIN.join(pages)
    if not text.strip():
        raise LetterError(path, f"PDF has no text layer ({len(pages)} page(s), scanned image?); run OCR first")
    return text
