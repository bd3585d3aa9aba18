"""Root CLI: wiring only; each command lives in ``imr_llm.cmd``."""
from __future__ import annotations

import typer

from .cmd import ask, config, evaluate, extract, index, model, precedent, serve, stats

app = typer.Typer(name="imr", help="Source-grounded records, search and answers over IMR determination letters.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

app.command("extract")(extract.extract)
app.command("schema")(extract.schema)
app.command("text")(extract.text)
app.command("index")(index.index)
app.command("ingest")(index.ingest)
app.command("ask")(ask.ask)
app.command("stats")(stats.stats)
app.command("export")(stats.export)
app.command("serve")(serve.serve)
app.command("precedent")(precedent.precedent)
app.command("config")(config.config)
app.add_typer(evaluate.app, name="eval", help="Run eval suites against labeled letters.")
app.add_typer(model.app, name="model", help="Install and check the bundled local test model.")


def main() -> None:
    from .config import ConfigError, redact

    try:
        app()
    except ConfigError as e:  # a bad setting met after start-up: one line, like every other error
        raise SystemExit(f"error: {redact(str(e))}") from None


if __name__ == "__main__":
    main()
