"""glmtune: ChatGLM3-6B QLoRA fine-tuning on transformers 5, with no remote code."""

from .checkpoint import DEFAULT_MODEL, ModelLoadError, load_model
from .tokenizer import chat_ids, load_tokenizer, stop_token_ids

__all__ = ["DEFAULT_MODEL", "ModelLoadError", "chat_ids", "load_model", "load_tokenizer", "stop_token_ids"]
