"""Did the fine-tune help? Base vs fine-tuned ChatGLM3 on held-out prompts, measured.

After a training run (its --output-dir holds the adapter, run_config.json and eval.txt):
    python chatglm_finetuning_tst.py --adapter out
Other prompts, ad-hoc questions, sampling:
    python chatglm_finetuning_tst.py --adapter out --data my_eval.jsonl --num-samples 50
    python chatglm_finetuning_tst.py --adapter out --prompt "高血压患者能喝咖啡吗？" --prompt "孩子发烧怎么办？"
    python chatglm_finetuning_tst.py --adapter out --do-sample --temperature 0.8 --seed 1
Writes chatglm_comparison.log (settings, aggregate table, side-by-side examples), a JSON report with
every number, and a PNG chart; prints the aggregate table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from peft import PeftModel

import glmtune
from glmtune.checkpoint import needs_gpu
from glmtune.comparison import Sample, aggregate_table, plot_aggregate, score, write_log, write_report
from glmtune.data import DataError, read_dataset
from glmtune.generation import Decoding, cast_adapters, generate_answers, reference_perplexity, warm_up
from glmtune.metrics import DEFAULT_LEXICON_PATH, Lexicon
from glmtune.prompts import prompt_ids
from glmtune.runs import read_run_config

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Scoring keeps full-vocabulary logits of whole sequences (65,024 x length x batch, in fp32 for the
# loss); generation batches of 100+ would need tens of GiB for it.
PERPLEXITY_BATCH = 16


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Compare base and fine-tuned ChatGLM3 answers on held-out prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
    )
    g = p.add_argument_group("what to compare")
    g.add_argument("--adapter", type=Path, default=Path("chatglm3-medical-lora"),
                   help="output folder of chatglm_finetuning.py (adapter + run_config.json + eval.txt)")
    g.add_argument("--base-model", default=None,
                   help="base model folder or hub id; default: the one recorded in run_config.json")
    g.add_argument("--quantization", choices=("as-trained", "nf4", "none"), default="as-trained",
                   help="how to load the base weights")
    g = p.add_argument_group("prompts")
    g.add_argument("--data", type=Path, default=None,
                   help="prompts with reference answers, any format the training script reads; "
                        "default: the adapter folder's eval.txt (held out at training time)")
    g.add_argument("--num-samples", type=int, default=50, help="use the first N prompts of --data (0 = all)")
    g.add_argument("--prompt", action="append", default=[], metavar="QUESTION",
                   help="an ad-hoc question without reference (repeatable); replaces --data")
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per answer at most")
    g.add_argument("--batch-size", type=int, default=128,
                   help="prompts per generate() call (1 = one at a time); decoding is launch-bound, so large "
                        "batches cost little more time per step than one prompt")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (with --do-sample)")
    g.add_argument("--top-p", type=float, default=0.8, help="nucleus sampling mass (with --do-sample)")
    g.add_argument("--seed", type=int, default=42, help="sampling seed, the same for both models")
    g = p.add_argument_group("metrics and outputs")
    g.add_argument("--terms-file", type=Path, default=DEFAULT_LEXICON_PATH,
                   help="medical-term lexicon, one term per line, '#' lines are comments/categories")
    g.add_argument("--no-perplexity", action="store_true", help="skip perplexity of the reference answers")
    g.add_argument("--log-file", type=Path, default=Path("chatglm_comparison.log"), help="the comparison log")
    g.add_argument("--report", type=Path, default=None,
                   help="JSON report with every number (default: the log file with .json)")
    g.add_argument("--chart", type=Path, default=None, help="PNG chart (default: the log file with .png)")
    g.add_argument("--examples", type=int, default=5, help="side-by-side examples written to the log")
    return p


def validate(args, parser) -> dict:
    """Check the adapter folder and flags before any model loads; return its run_config."""
    if not args.adapter.is_dir():
        parser.error(f"--adapter {args.adapter}: no such folder; pass the --output-dir of a training run")
    missing = [f for f in ADAPTER_FILES if not (args.adapter / f).is_file()]
    if missing:
        parser.error(f"--adapter {args.adapter} is incomplete: {', '.join(missing)} missing. "
                     "Did the training run finish? Re-run it with --resume.")
    try:
        run = read_run_config(args.adapter)
    except FileNotFoundError as err:
        parser.error(str(err))
    for ok, message in [
        (args.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.num_samples >= 0, "--num-samples must be 0 (all) or more"),
        (args.temperature > 0 and 0 < args.top_p <= 1, "--temperature must be > 0 and --top-p in (0, 1]"),
        (args.terms_file.is_file(), f"--terms-file {args.terms_file}: no such file"),
        (args.data is None or args.data.is_file(), f"--data {args.data}: no such file"),
    ]:
        if not ok:
            parser.error(message)
    base = args.base_model or run["settings"]["model"]
    if not torch.cuda.is_available() and needs_gpu(base):
        parser.error(f"this adapter's base is {base}, a 6B model that needs a CUDA GPU. "
                     "For a CPU demo, train with --model tiny and compare that adapter.")
    return run


def load_prompts(args) -> list[tuple[str, str | None]]:
    if args.prompt:
        pairs = [(q, None) for q in args.prompt]
    else:
        path = args.data or args.adapter / "eval.txt"
        try:
            pairs = [(ex.question, ex.answer) for ex in read_dataset(path).examples]
        except DataError as err:
            sys.exit(f"error: {err}")
        if args.num_samples:
            pairs = pairs[:args.num_samples]
    if not pairs:
        sys.exit("error: no prompts to compare: the eval split is empty (train with --eval-ratio > 0), "
                 "or pass --data FILE or --prompt QUESTION")
    return pairs


def load_model(args, run: dict):
    base = args.base_model or run["settings"]["model"]
    quantization = run["settings"]["quantization"] if args.quantization == "as-trained" else args.quantization
    model = glmtune.load_model(base, quantization=None if quantization == "none" else "nf4")
    try:
        model = PeftModel.from_pretrained(model, str(args.adapter))
    except RuntimeError as err:
        if "size mismatch" in str(err):
            sys.exit(f"error: the adapter in {args.adapter} was trained on a base with other shapes than {base} "
                     f"({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}). "
                     "Pass the --base-model it was trained on.")
        raise
    cast_adapters(model, model.get_input_embeddings().weight.dtype)
    return model.eval(), base, quantization


def run_side(model, tokenizer, side: str, prompts, pairs, args, run) -> tuple[list, list, dict]:
    """Generate (and score perplexity) with the adapter on ('tuned') or off ('base')."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    decoding = Decoding(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.seed)
    answers = generate_answers(model, tokenizer, prompts, decoding, args.batch_size, desc=side)
    wall = time.perf_counter() - began
    ppl: list = [None] * len(pairs)
    referenced = [(i, q, a) for i, (q, a) in enumerate(pairs) if a is not None]
    if referenced and not args.no_perplexity:
        values = reference_perplexity(model, tokenizer, [(q, a) for _, q, a in referenced],
                                      run["settings"]["prompt_format"], run["settings"]["max_length"],
                                      min(args.batch_size, PERPLEXITY_BATCH))
        for (i, _, _), v in zip(referenced, values):
            ppl[i] = v
    new_tokens = sum(a.new_tokens for a in answers)
    timing = {"wall_s": wall, "new_tokens": new_tokens, "tok_per_s": new_tokens / wall if wall else 0.0,
              "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    return answers, ppl, timing


def main(args: argparse.Namespace, run: dict) -> None:
    began = time.perf_counter()
    # data
    pairs = load_prompts(args)
    lexicon = Lexicon.load(args.terms_file)
    # tokenizer
    tokenizer = glmtune.load_tokenizer(args.adapter)
    prompts = [prompt_ids(tokenizer, q, run["settings"]["prompt_format"]) for q, _ in pairs]
    # model: one copy of the weights; the base side runs with the adapter disabled
    model, base, quantization = load_model(args, run)
    warm_up(model, tokenizer, prompts, args.batch_size)
    loaded = time.perf_counter()
    tuned, tuned_ppl, tuned_timing = run_side(model, tokenizer, "tuned", prompts, pairs, args, run)
    with model.disable_adapter():
        plain, base_ppl, base_timing = run_side(model, tokenizer, "base", prompts, pairs, args, run)
    # score and report
    scoring = time.perf_counter()
    samples = [Sample(q, a, {"base": plain[i], "tuned": tuned[i]}, {"base": base_ppl[i], "tuned": tuned_ppl[i]})
               for i, (q, a) in enumerate(pairs)]
    rows, aggregate = score(samples, lexicon)
    timing = {"base": base_timing, "tuned": tuned_timing, "load_s": loaded - began,
              "score_s": time.perf_counter() - scoring}
    settings = {"adapter": str(args.adapter), "base_model": base, "quantization": quantization,
                "prompt_format": run["settings"]["prompt_format"], "prompts": len(pairs),
                "prompt_source": "--prompt" if args.prompt else str(args.data or args.adapter / "eval.txt"),
                "decoding": "sampling" if args.do_sample else "greedy", "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size, "seed": args.seed, "terms_file": str(args.terms_file),
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"}
    table = aggregate_table(aggregate, timing)
    report = args.report or args.log_file.with_suffix(".json")
    chart = args.chart or args.log_file.with_suffix(".png")
    write_log(args.log_file, settings, table, rows, args.examples)
    write_report(report, settings, aggregate, timing, rows)
    plot_aggregate(chart, aggregate)
    print("\n".join(table))
    print(f"total {time.perf_counter() - began:.1f} s: loading and warm-up {timing['load_s']:.1f} s, scoring {timing['score_s']:.1f} s")
    print(f"wrote {args.log_file}, {report} and {chart}")


if __name__ == "__main__":
    parser = build_parser()
    arguments = parser.parse_args()
    main(arguments, validate(arguments, parser))
