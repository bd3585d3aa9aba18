"""imr-llm: source-grounded decision records and precedent answers over IMR determination letters."""
__version__ = "0.4.1"
