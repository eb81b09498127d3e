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

import shutil
import sys

from glmtune import cli
from glmtune.config import CompareConfig


def main(config: CompareConfig) -> None:
    from glmtune.comparison import Comparison

    with Comparison(config) as job:  # on leaving: the run folder free again, no half-written report
        job.load_run()      # the training run: base model, quantization, prompt layout
        if config.chat:     # a conversation instead of a comparison
            from glmtune.chat import start, talk

            talk(start(config, job.run, job.base, sys.stdout), sys.stdin)
            return
        job.load_prompts()  # --prompt, --data, or the eval split held out at training time
        print("\n".join(job.load_model()), flush=True)  # which weights and decoding, and why
        job.generate()      # base side, then the fine-tuned side; answers and reference perplexities
        summary = job.score()
        try:
            job.write()     # the log, JSON, chart and HTML report, published whole, before printing can fail
        finally:            # then on screen, also when the write failed (a full disk), before its error
            if config.prompt:  # ad-hoc questions have no reference: their answers are the result
                print("\n".join(job.answers_side_by_side(shutil.get_terminal_size().columns)))
            print("\n".join(summary), flush=True)
    print("\n".join(job.closing_lines()))


if __name__ == "__main__":
    config, options = cli.parse_args(CompareConfig, __doc__.splitlines()[0], epilog=__doc__)
    cli.run(main, config, debug=options.debug)
