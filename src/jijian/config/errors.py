"""The base class of every error caused by the user's input (a file, a flag, a request)."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: the CLI prints the message (naming the field, file or line) and exits 2.

    Every package defines its own subclasses (e.g. `SourceError`, `TokenizerError`); the CLI catches
    this base, so adding a new error kind never means editing the CLI.
    """
