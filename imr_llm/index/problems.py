"""The index's one error type."""


class IndexProblem(Exception):
    """A one-line, actionable index problem (wrong embedder, newer schema, damaged folder)."""
