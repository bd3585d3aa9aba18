"""Build test PDFs on the fly (fpdf2 writes, pypdf encrypts): text-layer, image-only, locked."""
from __future__ import annotations

from pathlib import Path


def text_pdf(text: str, path: Path, lines_per_page: int = 45) -> Path:
    from fpdf import FPDF

    pdf = FPDF(format="letter")
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=10)
    lines = text.encode("latin-1", "replace").decode("latin-1").splitlines()
    for i in range(0, max(1, len(lines)), lines_per_page):
        pdf.add_page()
        y = 15
        for line in lines[i:i + lines_per_page]:
            pdf.text(15, y, line.rstrip())
            y += 5.5
    pdf.output(str(path))
    return path


def image_only_pdf(path: Path) -> Path:
    """A 'scanned' page: drawn shapes, no text layer."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    for i in range(30):
        pdf.rect(10, 10 + i * 8, 150 - i * 3, 4, style="F")
    pdf.output(str(path))
    return path


def locked_pdf(src: Path, path: Path, password: str = "s3cret") -> Path:
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter()
    for p in PdfReader(str(src)).pages:
        w.add_page(p)
    w.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    with open(path, "wb") as f:
        w.write(f)
    return path
