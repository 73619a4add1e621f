"""The error every layer raises for a mistake in what the user asked for.

``UserError`` (and the library's input errors: ``ValueError`` and its subclasses, the ``OSError`` kinds about
paths) reach a person as one line on stderr and exit status 2 through the command-line layer
(:mod:`chammi_cli.errors`). It lives here, at the bottom of the package graph, so that the data library, the
pipelines and the models can raise it without importing the command-line layer.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for; the message says what and, where it can, how to fix it."""
