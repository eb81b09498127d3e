"""Commands the tool prints for the user to paste into a shell, quoted so that every path survives
the paste (a space, a quote or a `$` in a folder name would otherwise split or change it)."""

from __future__ import annotations

import shlex
from pathlib import Path


def command(*words: str | Path) -> str:
    """The words as one POSIX shell command line, each quoted only where the shell would split it."""
    return shlex.join(map(str, words))
