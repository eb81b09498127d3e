"""Did the fine-tune help? Base vs fine-tuned ChatGLM3 on held-out prompts, measured.

After a training run (its --output-dir holds the adapter, run_config.json and the eval split):
    python chatglm_finetuning_tst.py --adapter out
Other prompts, ad-hoc questions, sampling:
    python chatglm_finetuning_tst.py --adapter out --data my_eval.jsonl --num-samples 50
    python chatglm_finetuning_tst.py --adapter out --prompt "高血压患者能喝咖啡吗？" --prompt "孩子发烧怎么办？"
    python chatglm_finetuning_tst.py --adapter out --do-sample --temperature 0.8 --seed 1
    python chatglm_finetuning_tst.py --adapter out --quantization nf4 --compile off   # the slower, smaller path
    torchrun --nproc_per_node 2 chatglm_finetuning_tst.py --adapter out   # prompts split over 2 GPUs
Prints the verdict (did the fine-tune help, with 95% intervals) and the metric table, and writes them
with every answer to ADAPTER/comparison/ (numbered comparison-2, ... on a rerun; --output, --overwrite):
chatglm_comparison.log, .json (every number), .png (chart) and .html (open it in a browser).
Talk with the fine-tuned model (/base, /tuned, /both, /reset, /exit), or pipe turns in, one per line:
    python chatglm_finetuning_tst.py --adapter out --chat
    printf '头痛怎么办？\n吃什么药？\n' | python chatglm_finetuning_tst.py --adapter out --chat
"""

from __future__ import annotations

from glmtune.core import cli
from glmtune.core.config import CompareConfig

if __name__ == "__main__":
    config, options = cli.parse_args(CompareConfig, __doc__.splitlines()[0], epilog=__doc__)
    # flags are checked before torch loads
    from glmtune.comparison.job import main  # the stages, in order
    cli.run(main, config, debug=options.debug)
