"""Base vs fine-tuned ChatGLM3 on held-out prompts: `glmtune compare` (and, with --chat, `glmtune chat`)
under its original name.

    python chatglm_finetuning_tst.py --adapter out
    python chatglm_finetuning_tst.py --adapter out --prompt "高血压患者能喝咖啡吗？"
    python chatglm_finetuning_tst.py --adapter out --chat
Every flag, with more examples: python chatglm_finetuning_tst.py --help (as glmtune compare --help).
The stages, in order: glmtune/comparison/job.py (compare, main).
"""

from glmtune.__main__ import run_command

if __name__ == "__main__":
    run_command("compare")
