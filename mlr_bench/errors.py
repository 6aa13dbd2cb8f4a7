"""Errors caused by input the user can fix; the CLI prints them as one message with exit code 2."""


class MLRBenchError(Exception):
    """Bad input (file, value, name) or a missing resource, described so the user can fix it."""
