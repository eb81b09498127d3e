"""Library messages a user can do nothing about, silenced where they arise and nowhere else."""

from __future__ import annotations

import contextlib
import logging
import warnings


class _KernelsHubNotice(logging.Filter):
    """bitsandbytes logs, at import on CPUs with AVX512-BF16, that an optional kernel from the HF
    kernels hub is missing and that the user should `pip install kernels`; the built-in kernel it
    falls back to is the one our results come from, so the advice only adds noise (and a network
    dependency). peft and transformers import bitsandbytes on their own, so the filter is set on
    bitsandbytes' logger when glmtune is imported, before any of them can."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_NOTICE = _KernelsHubNotice()


def install_log_filters() -> None:
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NOTICE)  # a set: adding twice is harmless


@contextlib.contextmanager
def quiet_peft():
    """peft probes `model.is_gradient_checkpointing`, which transformers 5 deprecates with a
    FutureWarning the user can do nothing about. Silenced only around our peft calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
