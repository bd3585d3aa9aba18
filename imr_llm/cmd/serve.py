"""`imr serve`: the local page over the .imr folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import die, get_settings, notice


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="127.0.0.1 by default; any other address needs IMR_SERVE_TOKEN"),
    port: int = typer.Option(8321, "--port"),
    data: Optional[Path] = typer.Option(None, "--data", help="the .imr folder (default: IMR_DATA_DIR or ./.imr)"),
) -> None:
    """Read letters with every value highlighted where it stands, filter, chart, download and ask."""
    import ipaddress

    import uvicorn

    from ..page.web import create_app

    s = get_settings(None)
    data_dir = data or s.data_dir
    if not (data_dir / "index" / "store.sqlite").is_file():
        die(f"no index in {data_dir / 'index'}: run `imr ingest LETTERS` first (or pass --data DIR)")
    token = s.env.serve_secret() if s.env else None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        die(f"--host {host}: these are medical records; serving beyond this machine needs IMR_SERVE_TOKEN (every request must carry it)")
    notice(f"serving {data_dir} on http://{host}:{port}/" + (" (token required: open /?token=...)" if token else ""))
    uvicorn.run(create_app(data_dir, token, hosts=[host]), host=host, port=port, log_level="warning")
