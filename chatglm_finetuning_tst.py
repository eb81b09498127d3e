"""Base vs fine-tuned ChatGLM3 on held-out prompts, and `--chat`: `glmtune compare` (and `glmtune
chat`) under its original name, with the same flags (--help lists them, with examples)."""

from glmtune.__main__ import run_command

if __name__ == "__main__":
    run_command("compare")
