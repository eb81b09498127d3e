"""glmtune: ChatGLM3-6B QLoRA fine-tuning on transformers 5, with no remote code.

The public names below load lazily, so `import glmtune` (and the scripts' flag checks) cost no
torch import; each module is imported on first use of a name it defines.
"""

from __future__ import annotations

import importlib

from .core.quiet import install_log_filters

install_log_filters()

_EXPORTS = {
    "load_model": "model.loading", "load_tokenizer": "model.tokenizer", "chat_ids": "model.prompts",
    "stop_token_ids": "model.tokenizer", "read_dataset": "data.reading", "parse_line": "data.reading",
    "Example": "data.reading", "DEFAULT_MODEL": "core.config", "TrainConfig": "core.config",
    "CompareConfig": "core.config", "ExportConfig": "core.config", "GlmtuneError": "core.errors",
    "ConfigError": "core.errors", "DataError": "core.errors", "ModelLoadError": "core.errors",
    "RunDirError": "core.errors", "train": "training.job", "compare": "comparison.job",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'glmtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
