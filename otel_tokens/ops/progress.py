"""Progress for anything that takes more than a moment: a spinner on stderr, only on a terminal.

Output that a script reads (stdout, `--json`) never carries progress, and a pipe or a CI log gets
none either: the spinner is drawn only when stderr is a TTY.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def progress(what: str) -> Iterator[None]:
    """Show `what` with a spinner on stderr while the block runs (TTY only)."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(what):
        yield
