"""Loading: normalisation with an exact map back, and one-line errors for bad input."""
from __future__ import annotations

import pytest

from imr_llm.core.load import LetterError, expand_inputs, normalize, read_letter

from imr_llm.bench.pdfs import image_only_pdf, locked_pdf, text_pdf


def test_normalize_maps_every_word_back():
    # a line-end hyphen is dropped only when the joined word occurs elsewhere in the letter;
    # known prefixes ("post-") keep it: IMR letters are full of real compounds broken at line ends
    raw = "The  applicant   had a \n\nfusion.  \n\n \n\nNext para-\ngraph here and post-\n\nsurgical care, see paragraph 2."
    n = normalize(raw)
    assert n.text == "The applicant had a fusion.\nNext paragraph here and post-surgical care, see paragraph 2."
    for word in ("applicant", "fusion.", "here", "care,"):
        i = n.text.index(word)
        s, e = n.span_to_orig(i, i + len(word))
        assert raw[s:e] == word
    i = n.text.index("paragraph")
    s, e = n.span_to_orig(i, i + len("paragraph"))
    assert raw[s:e] == "para-\ngraph"  # dehyphenated word maps to its broken original


def test_normalize_drops_page_furniture_inside_a_sentence():
    raw = "frequency should be\n\nPage 2 of 3\n\nCM15-0123456 | Page 2 of 3\n\ntapered over time."
    assert normalize(raw).text == "frequency should be tapered over time."


def test_bad_inputs_have_one_line_reasons(tmp_path):
    cases = {
        "empty.txt": (b"", "empty file"),
        "blank.txt": (b"   \n\n  ", "no text"),
        "binary.txt": (b"\x00\x01\x02PK\x03\x04" * 50, "binary file"),
    }
    for name, (data, why) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(LetterError) as ei:
            read_letter(p)
        msg = str(ei.value)
        assert name in msg and why in msg and "\n" not in msg


def test_cp1252_and_utf16_are_decoded(tmp_path, seeds):
    text = seeds["001"].read_text().replace("Kemp's", "Kemp\u2019s")
    p = tmp_path / "win.txt"
    p.write_bytes(text.encode("cp1252"))
    letter = read_letter(p)
    assert "Kemp\u2019s" in letter.text and letter.notes == ["decoded as Windows-1252 (not UTF-8)"]
    q = tmp_path / "u16.txt"
    q.write_bytes(text.encode("utf-16"))
    assert read_letter(q).text == text


def test_huge_file_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imr_llm.cli import app

    p = tmp_path / "huge.txt"
    p.write_text("x" * 2000)
    with pytest.raises(LetterError, match="too large"):
        read_letter(p, max_bytes=1000)
    monkeypatch.setenv("IMR_MAX_BYTES", "1000")  # the setting reaches the reader through the runner
    res = CliRunner().invoke(app, ["extract", str(p), "--out", "o.jsonl"])
    assert res.exit_code == 1 and "file too large (0.0 MB > 0 MB limit; set IMR_MAX_BYTES)" in res.output


def test_pdf_text_layer_and_scanned_and_locked(tmp_path, seeds):
    src = text_pdf(seeds["004"].read_text(), tmp_path / "004.pdf")
    letter = read_letter(src)
    assert letter.kind == "pdf" and "CM14-0095145" in letter.text
    with pytest.raises(LetterError, match="no text layer"):
        read_letter(image_only_pdf(tmp_path / "scan.pdf"))
    with pytest.raises(LetterError, match="password-protected"):
        read_letter(locked_pdf(src, tmp_path / "locked.pdf"))
    bad = tmp_path / "trunc.pdf"
    bad.write_bytes(src.read_bytes()[:300])
    with pytest.raises(LetterError) as ei:
        read_letter(bad)
    assert "trunc.pdf" in str(ei.value)


def test_expand_inputs_folders_globs(tmp_path, seeds):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for k, p in seeds.items():
        (tmp_path / "a" / "b" / p.name).write_text(p.read_text())
    (tmp_path / "a" / "notes.md").write_text("x")
    assert len(expand_inputs([str(tmp_path / "a")])[0]) == 3
    assert len(expand_inputs([str(tmp_path / "a" / "**" / "00*.txt")])[0]) == 3
    # a missing path is reported and the valid ones still come back
    found, errors = expand_inputs([str(tmp_path / "missing"), str(tmp_path / "a")])
    assert len(found) == 3 and len(errors) == 1 and "missing: no such file or folder" in errors[0]


def test_symlink_cycles_end_and_unreadable_folders_are_reported(tmp_path, seeds, monkeypatch):
    """`dir/**/*.txt` with two `x -> .` links used to run forever; a chmod 000 folder was skipped silently."""
    import os

    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "l.txt").write_text(seeds["000"].read_text())
    os.symlink(".", d / "x")
    os.symlink(".", d / "sub" / "y")
    found, errors = expand_inputs([str(d / "**" / "*.txt")])
    assert [p.name for p in found] == ["l.txt"] and errors == []
    locked = d / "locked"
    locked.mkdir()
    (locked / "m.txt").write_text("x")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads a chmod 000 folder: make the OS refuse as it would anyone else
            real = os.scandir

            def scandir(path="."):
                if os.path.realpath(path) == str(locked.resolve()):
                    raise PermissionError(13, "Permission denied", str(path))
                return real(path)
            monkeypatch.setattr(os, "scandir", scandir)
        found, errors = expand_inputs([str(d)])
        assert len(found) == 1 and len(errors) == 1 and "locked" in errors[0] and "cannot read folder" in errors[0]
    finally:
        locked.chmod(0o755)
