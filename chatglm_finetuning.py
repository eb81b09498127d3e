"""QLoRA fine-tuning of ChatGLM3-6B on medical Q&A, on transformers 5 with no remote code.

CPU demo (tiny random model, about a minute):
    python chatglm_finetuning.py --model tiny --output-dir out
GPU, the real model (4-bit NF4 base, LoRA r=16 on q/k/v/o and both MLP projections):
    python chatglm_finetuning.py --data financial_data.txt --output-dir chatglm3-medical-lora
Settings from a YAML file (flags override it), TensorBoard logging, conversation data:
    python chatglm_finetuning.py --config train.yaml --report-to tensorboard
    python chatglm_finetuning.py --data dialogues.jsonl --output-dir dialogue-lora
Continue an interrupted run (Ctrl-C saves a checkpoint first):
    python chatglm_finetuning.py --output-dir chatglm3-medical-lora --resume
Several GPUs, data parallel (the effective batch stays 16 with --batch-size auto):
    torchrun --nproc_per_node 2 chatglm_finetuning.py --output-dir chatglm3-medical-lora
Then compare base and fine-tuned answers:
    python chatglm_finetuning_tst.py --adapter chatglm3-medical-lora
"""

from __future__ import annotations

from glmtune.core import cli
from glmtune.core.config import TrainConfig

if __name__ == "__main__":
    config, options = cli.parse_args(TrainConfig, __doc__.splitlines()[0], epilog=__doc__)
    # flags are checked before torch loads
    from glmtune.training.job import main  # the stages, in order
    cli.run(main, config, options, debug=options.debug)
