"""Library messages a user can do nothing about, silenced where they arise and nowhere else."""

from __future__ import annotations

import contextlib
import logging
import warnings


class _Drop(logging.Filter):
    """Drops a logger's records that contain `phrase`."""

    def __init__(self, phrase: str):
        super().__init__()
        self.phrase = phrase

    def filter(self, record: logging.LogRecord) -> bool:
        return self.phrase not in record.getMessage()


# Each filter is set on the logger that logs the message, when glmtune is imported (before the library
# can log it).
_NOTICES = {
    # bitsandbytes logs, at import on CPUs with AVX512-BF16, that an optional kernel from the HF
    # kernels hub is missing and that the user should `pip install kernels`; the built-in kernel it
    # falls back to is the one our results come from, so the advice only adds noise (and a network
    # dependency). peft and transformers import bitsandbytes on their own.
    "bitsandbytes.backends.cpu.ops": _Drop("kernels-community"),
    # transformers warns that a text longer than the model's context "will result in indexing
    # errors" whenever one is tokenized; glmtune tokenizes such texts to measure them, then cuts or
    # refuses them in its own words (training's --max-length, a prompt with no room beside
    # --max-new-tokens, a chat message too long), so the warning only precedes the real explanation.
    "transformers.tokenization_utils_base": _Drop("Token indices sequence length is longer"),
}


def install_log_filters() -> None:
    for name, notice in _NOTICES.items():
        logging.getLogger(name).addFilter(notice)  # a set: adding twice is harmless


@contextlib.contextmanager
def quiet_peft():
    """peft probes `model.is_gradient_checkpointing`, which transformers 5 deprecates with a
    FutureWarning the user can do nothing about. Silenced only around our peft calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
