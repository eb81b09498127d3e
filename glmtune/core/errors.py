"""The errors a user can fix. Each message says what is wrong and what to do about it; the scripts
print it as one line (no traceback) and name the flag when the error carries one."""

from __future__ import annotations

from pathlib import PurePath


def few(items, shown: int = 3) -> str:
    """Some of `items` for a message: 'a, b, c and 2 more' (paths by their names)."""
    words = [item.name if isinstance(item, PurePath) else str(item) for item in items]
    return ", ".join(words[:shown]) + (f" and {len(words) - shown} more" if len(words) > shown else "")


class GlmtuneError(Exception):
    """An error caused by input, settings or the environment, not by a bug in glmtune."""


class ConfigError(GlmtuneError, ValueError):
    """A setting that cannot work. `field` is the TrainConfig/CompareConfig field it concerns (the
    scripts show it as its flag, e.g. lora_r -> --lora-r), or None when several are involved."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


class DataError(GlmtuneError, ValueError):
    """A data file cannot be read at all (as opposed to one unusable record)."""


class ModelLoadError(GlmtuneError, ValueError):
    """A model folder or setting that cannot be loaded, with what to do about it."""


class RunDirError(GlmtuneError):
    """An output folder that holds something this run must not touch or cannot continue."""


class TrainingError(GlmtuneError):
    """Training stopped on a condition the user must act on (out of memory, a full disk)."""


class Diverged(TrainingError):
    """The loss or the weights became NaN/inf: seen alike by every process of a run."""


class Interrupted(GlmtuneError):
    """The user stopped training (Ctrl-C); `checkpoint` is what a resume will continue from."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint
