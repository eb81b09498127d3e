"""Did the fine-tune help? Base vs fine-tuned ChatGLM3 on held-out prompts, measured.

After a training run (its --output-dir holds the adapter, run_config.json and the eval split):
    python chatglm_finetuning_tst.py --adapter out
Other prompts, ad-hoc questions, sampling:
    python chatglm_finetuning_tst.py --adapter out --data my_eval.jsonl --num-samples 50
    python chatglm_finetuning_tst.py --adapter out --prompt "高血压患者能喝咖啡吗？" --prompt "孩子发烧怎么办？"
    python chatglm_finetuning_tst.py --adapter out --do-sample --temperature 0.8 --seed 1
Prints the verdict (did the fine-tune help, with 95% intervals) and the metric table, and writes them
with every answer to ADAPTER/comparison/ (numbered comparison-2, ... on a rerun; --output, --overwrite):
chatglm_comparison.log, .json (every number), .png (chart) and .html (open it in a browser).
"""

from __future__ import annotations

import shutil

from glmtune import cli
from glmtune.config import CompareConfig


def main(config: CompareConfig) -> None:
    from glmtune.comparison import Comparison

    job = Comparison(config)
    job.load_run()      # the training run: base model, quantization, prompt layout
    job.load_prompts()  # --prompt, --data, or the eval split held out at training time
    job.load_model()    # one copy of the weights; the base side runs with the adapter disabled
    job.generate()      # both sides' answers and reference perplexities, timed apart
    summary = job.score()
    if config.prompt:  # ad-hoc questions have no reference: their answers are the result
        print("\n".join(job.answers_side_by_side(shutil.get_terminal_size().columns)))
    print("\n".join(summary), flush=True)  # on screen before any file, so a full disk cannot take it
    job.write()         # the log, JSON report, chart and HTML report, in ADAPTER/comparison/
    print("\n".join(job.closing_lines()))


if __name__ == "__main__":
    config, options = cli.parse_args(CompareConfig, __doc__.splitlines()[0], epilog=__doc__)
    cli.run(main, config, debug=options.debug)
