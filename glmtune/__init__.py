"""glmtune: ChatGLM3-6B QLoRA fine-tuning on transformers 5, with no remote code.

The public names below load lazily, so `import glmtune` (and the scripts' flag checks) cost no
torch import; each module is imported on first use of a name it defines.
"""

from __future__ import annotations

import importlib

from .quiet import install_log_filters

install_log_filters()

_EXPORTS = {
    "load_model": "checkpoint", "load_tokenizer": "tokenizer", "chat_ids": "tokenizer",
    "stop_token_ids": "tokenizer", "read_dataset": "data", "parse_line": "data", "Example": "data",
    "DEFAULT_MODEL": "config", "TrainConfig": "config", "CompareConfig": "config", "ExportConfig": "config",
    "GlmtuneError": "errors", "ConfigError": "errors", "DataError": "errors", "ModelLoadError": "errors",
    "RunDirError": "errors", "train": "finetune", "compare": "comparison",
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
