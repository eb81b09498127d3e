"""What the tool prints: commands for the user to paste into a shell, quoted so that every path
survives the paste (a space, a quote or a `$` in a folder name would otherwise split or change it);
and text from a model or a file, escaped so it cannot move the cursor or break a log line."""

from __future__ import annotations

import shlex
import unicodedata
from pathlib import Path


def command(*words: str | Path) -> str:
    """The words as one POSIX shell command line, each quoted only where the shell would split it."""
    return shlex.join(map(str, words))


def printable(text: str, keep: str = "") -> str:
    """Control and format characters escaped (\\n, \\x1b, \\u200b) except those in `keep`, so one
    answer is one log line and no answer can move the cursor or recolour a terminal showing the log;
    also lone surrogates (\\udcb8, bytes that were not UTF-8), which no UTF-8 file or console can hold."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) in ("Cc", "Cf", "Cs") and ch not in keep else ch for ch in text)
