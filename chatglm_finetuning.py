"""QLoRA fine-tuning of ChatGLM3-6B on medical Q&A: `glmtune train` under its original name.

CPU demo (tiny random model):
    python chatglm_finetuning.py --model tiny --output-dir out
GPU, the real model (4-bit NF4 base, LoRA r=16 on q/k/v/o and both MLP projections):
    python chatglm_finetuning.py --data financial_data.txt --output-dir chatglm3-medical-lora
Every flag, with more examples: python chatglm_finetuning.py --help (the same as glmtune train --help).
The stages, in order: glmtune/training/job.py (train).
"""

from glmtune.__main__ import run_command

if __name__ == "__main__":
    run_command("train")
