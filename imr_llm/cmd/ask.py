import typer
app = typer.Typer()
def ask(): "Not yet."
