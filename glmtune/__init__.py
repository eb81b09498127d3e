"""glmtune: ChatGLM3-6B QLoRA fine-tuning on transformers 5, with no remote code."""
