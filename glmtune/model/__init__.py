"""Stage 2, model: where ChatGLM3's files come from, its weights loaded into the native GLM model, its tokenizer and prompt layouts, LoRA."""
