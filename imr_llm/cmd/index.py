import typer
app = typer.Typer()
def index(): "Not yet."
def ingest(): "Not yet."
