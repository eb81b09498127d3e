"""QLoRA fine-tuning of ChatGLM3-6B on medical Q&A: `glmtune train` under its original name, with
the same flags (--help lists them, with examples)."""

from glmtune.__main__ import run_command

if __name__ == "__main__":
    run_command("train")
