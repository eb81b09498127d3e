"""QLoRA fine-tuning of ChatGLM3-6B on medical Q&A, on transformers 5 with no remote code.

CPU demo (tiny random model, seconds):
    python chatglm_finetuning.py --model tiny --output-dir out
GPU, the real model (4-bit NF4 base, LoRA r=16 on q/k/v/o and both MLP projections):
    python chatglm_finetuning.py --data financial_data.txt --output-dir chatglm3-medical-lora
Resume an interrupted run:
    python chatglm_finetuning.py --output-dir chatglm3-medical-lora --resume
Then compare base and fine-tuned answers:
    python chatglm_finetuning_tst.py --adapter chatglm3-medical-lora
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments, set_seed

import glmtune
from glmtune.checkpoint import DEFAULT_MODEL, needs_gpu
from glmtune.data import DataError, read_dataset, write_seed_format
from glmtune.memory import fit_micro_batch, plan_checkpointing
from glmtune.prompts import PROMPT_FORMATS
from glmtune.runs import file_sha256, prepare_output_dir, write_run_config
from glmtune.training import (
    GroupedTrainer,
    PadCollator,
    StopOnNonFiniteLoss,
    count_parameters,
    plot_losses,
    resolve_lora_targets,
    split_eval,
    tokenize_examples,
)

SEED_LORA_TARGETS = "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="QLoRA fine-tuning of ChatGLM3-6B on medical Q&A (seed format, CSV or JSONL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="ChatGLM3 hub id, a local checkpoint folder, or 'tiny' (CPU demo model)")
    g.add_argument("--data", type=Path, default=Path("financial_data.txt"),
                   help="training data: .txt seed lines '问题？ 描述,回答', .csv (department,title,ask,answer), "
                        ".jsonl/.json (question/answer or instruction/input/output)")
    g.add_argument("--output-dir", type=Path, default=Path("chatglm3-medical-lora"),
                   help="where the adapter, tokenizer, run_config.json, eval.txt, metrics and loss.png go")
    g.add_argument("--eval-ratio", type=float, default=0.05, help="fraction of examples held out (saved as eval.txt)")
    g.add_argument("--seed", type=int, default=42, help="seed for the eval split, LoRA init and data order")
    g.add_argument("--overwrite", action="store_true", help="replace an output folder that holds a different run")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")

    g = p.add_argument_group("prompt")
    g.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="glm3",
                   help="glm3: '[Round 1]\\n\\n问：{q}\\n\\n答：'; chat: ChatGLM3's <|user|>/<|assistant|> turns")
    g.add_argument("--max-length", type=int, default=1024,
                   help="tokens per example; the question is cut to half of it at most, then the answer's end")
    g.add_argument("--train-on-prompt", action="store_true", help="also compute the loss on prompt tokens")

    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    g.add_argument("--lora-alpha", type=int, default=32, help="LoRA scaling numerator (scale = alpha / r)")
    g.add_argument("--lora-dropout", type=float, default=0.1, help="dropout on the LoRA input")
    g.add_argument("--lora-target", default=SEED_LORA_TARGETS,
                   help="modules, comma-separated: ChatGLM3 names (query_key_value,dense,dense_h_to_4h,"
                        "dense_4h_to_h) or native ones (q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=3.0, help="passes over the training split")
    g.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; overrides --epochs when > 0")
    g.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate (linear decay)")
    g.add_argument("--warmup-ratio", type=float, default=0.03, help="fraction of steps spent warming up")
    g.add_argument("--batch-size", default="auto",
                   help="micro-batch per step, or 'auto' to fit it to free GPU memory; the effective batch "
                        "stays batch-size x grad-accum (auto: 1 x grad-accum)")
    g.add_argument("--grad-accum", type=int, default=16, help="micro-batches per optimizer step")
    g.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="recompute activations in backward to save memory. auto: on a GPU, each micro-batch "
                        "checkpoints the fewest layers that fit (none when it fits without); off on CPU. "
                        "on: every layer, every step (the seed's setting)")
    g.add_argument("--save-steps", type=int, default=50, help="checkpoint every N optimizer steps (for --resume)")
    g.add_argument("--logging-steps", type=int, default=5, help="log the training loss every N optimizer steps")

    g = p.add_argument_group("hardware")
    g.add_argument("--quantization", choices=("nf4", "none"), default="nf4",
                   help="nf4: 4-bit NF4 base weights (QLoRA); none: full-precision base")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="compute precision; auto: bf16 where the GPU has it, else fp16; fp32 on CPU")
    return p


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fail in the first second, with the fix, rather than after the model has loaded."""
    checks = [
        (args.lora_r >= 1, "--lora-r must be at least 1"),
        (args.lora_alpha >= 1, "--lora-alpha must be at least 1"),
        (0 <= args.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
        (args.learning_rate > 0, "--learning-rate must be positive"),
        (0 <= args.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
        (0 <= args.eval_ratio < 1, "--eval-ratio must be in [0, 1)"),
        (args.epochs > 0 or args.max_steps > 0, "--epochs must be positive (or give --max-steps)"),
        (args.grad_accum >= 1, "--grad-accum must be at least 1"),
        (args.max_length >= 64, "--max-length must be at least 64 tokens"),
        (args.save_steps >= 1 and args.logging_steps >= 1, "--save-steps and --logging-steps must be at least 1"),
        (args.batch_size == "auto" or (args.batch_size.isdigit() and int(args.batch_size) >= 1),
         f"--batch-size must be 'auto' or a positive integer, not {args.batch_size!r}"),
        (args.data.is_file(), f"--data {args.data}: no such file"),
        (not (args.resume and args.overwrite), "--resume and --overwrite contradict each other; pick one"),
    ]
    try:
        resolve_lora_targets(args.lora_target)
    except ValueError as err:
        checks.append((False, str(err)))
    cuda = torch.cuda.is_available()
    if args.precision in ("bf16", "fp16") and not cuda:
        checks.append((False, f"--precision {args.precision} needs a CUDA GPU; use --precision fp32 (or auto) on CPU"))
    if args.precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        checks.append((False, "this GPU has no bf16; use --precision fp16 (or auto)"))
    if not cuda and needs_gpu(args.model):
        checks.append((False, f"no CUDA GPU found, and --model {args.model} is a 6B-parameter model that "
                              "needs one. For a CPU demo run: --model tiny"))
    for ok, message in checks:
        if not ok:
            parser.error(message)


def resolve_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def load_data(args, output_dir: Path):
    """Read and check the data file, write its report, hold out the eval split."""
    try:
        dataset = read_dataset(args.data)
    except DataError as err:
        sys.exit(f"error: {err}")
    (output_dir / "data_report.txt").write_text("\n".join(dataset.report_lines()) + "\n", encoding="utf-8")
    if dataset.skipped:
        (output_dir / "skipped_lines.txt").write_text(dataset.skipped_report(), encoding="utf-8")
    train, held_out = split_eval(dataset.examples, args.eval_ratio, args.seed)
    write_seed_format(held_out, output_dir / "eval.txt")
    return dataset, train, held_out


def uses_checkpointing(args) -> bool:
    return args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and torch.cuda.is_available())


def fit_memory(args, model, train_ds, collator):
    """Micro-batch, accumulation and checkpoint plan: the effective batch stays as asked."""
    effective = (1 if args.batch_size == "auto" else int(args.batch_size)) * args.grad_accum
    if args.batch_size == "auto":  # sized with every layer checkpointed (auto) or as set (on/off)
        micro = fit_micro_batch(model, train_ds, collator, effective)
    else:
        micro = int(args.batch_size)
    plan = None
    if args.gradient_checkpointing == "auto":
        plan = plan_checkpointing(model, train_ds, collator, micro)
    return micro, effective // micro, plan


def build_model(args, precision: str, targets: list[str]):
    quantization = None if args.quantization == "none" else "nf4"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = glmtune.load_model(args.model, quantization=quantization, dtype=dtype)
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    if uses_checkpointing(args):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    # peft's save_embedding_layers="auto" re-reads the base's config.json to detect a resized vocab;
    # ChatGLM3's original config misreads as resized, and every save (the Trainer's checkpoints too)
    # would carry both 0.5 GB embedding matrices. The vocabulary is never resized here.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    return model


def build_trainer(args, model, train_ds, eval_ds, collator, micro: int, accum: int, precision: str,
                  callbacks: list, plan=None) -> GroupedTrainer:
    training_args = TrainingArguments(
        output_dir=str(args.output_dir), num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=micro, per_device_eval_batch_size=micro, gradient_accumulation_steps=accum,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_ratio, lr_scheduler_type="linear",
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch" if len(eval_ds) else "no", save_strategy="steps", save_steps=args.save_steps,
        save_total_limit=2, logging_steps=args.logging_steps, logging_nan_inf_filter=False,
        report_to="none", seed=args.seed, data_seed=args.seed, remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(), optim="adamw_torch_fused",
    )
    return GroupedTrainer(model=model, args=training_args, train_dataset=train_ds,
                          eval_dataset=eval_ds if len(eval_ds) else None, data_collator=collator,
                          callbacks=callbacks, checkpoint_plan=plan)


def describe_checkpointing(args, plan) -> str:
    if plan is not None:
        return (f"auto per micro-batch ({plan.per_token_none / 2**20:.2f} MiB/token without, "
                f"{plan.per_token_full / 2**20:.2f} with all {plan.layers} layers; {plan.budget_bytes / 2**30:.1f} GiB free)")
    return "on (every layer)" if uses_checkpointing(args) else "off"


def print_summary(args, dataset, train, held_out, stats, model, targets, micro, accum, precision, plan) -> None:
    trainable, total = count_parameters(model)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    memory = (f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated after loading"
              if torch.cuda.is_available() else "n/a (CPU)")
    lines = [
        f"data       {args.data}: {len(dataset.examples)} examples used of {dataset.lines_read} lines read "
        f"({len(dataset.skipped)} skipped, {dataset.duplicates_removed} duplicates, {dataset.repaired} repaired)",
        f"split      {len(train)} train / {len(held_out)} eval (seed {args.seed})",
        f"tokens     {stats.lines()[0]}; {stats.lines()[1]}",
        f"model      {args.model} ({args.quantization}, {precision}); LoRA r={args.lora_r} alpha={args.lora_alpha} "
        f"on {', '.join(targets)}",
        f"params     {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)",
        f"batch      micro {micro} x accum {accum} = effective {micro * accum}; length-grouped, dynamic padding",
        f"memory     activation checkpointing {describe_checkpointing(args, plan)}",
        f"device     {device}; {memory}",
        f"output     {args.output_dir}",
    ]
    print("\n".join(["=" * 80, *lines, "=" * 80]), flush=True)


def main(args: argparse.Namespace):
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    set_seed(args.seed)
    prepare_output_dir(args.output_dir, settings, args.resume, args.overwrite)
    precision = resolve_precision(args.precision)
    targets = resolve_lora_targets(args.lora_target)

    # data
    dataset, train_examples, eval_examples = load_data(args, args.output_dir)
    # tokenizer
    tokenizer = glmtune.load_tokenizer(args.model)
    train_ds, stats = tokenize_examples(train_examples, tokenizer, args.prompt_format, args.max_length,
                                        args.train_on_prompt)
    eval_ds, _ = tokenize_examples(eval_examples, tokenizer, args.prompt_format, args.max_length,
                                   args.train_on_prompt)
    # model
    model = build_model(args, precision, targets)
    collator = PadCollator(tokenizer.pad_token_id)
    micro, accum, plan = fit_memory(args, model, train_ds, collator)
    resolved = {"precision": precision, "lora_targets": targets, "micro_batch": micro, "grad_accum": accum,
                "effective_batch": micro * accum, "checkpointing": describe_checkpointing(args, plan),
                "data_sha256": file_sha256(args.data),
                "examples": {"train": len(train_ds), "eval": len(eval_ds)}, "tokens": vars(stats)}
    write_run_config(args.output_dir, settings, resolved)
    with open(args.output_dir / "data_report.txt", "a", encoding="utf-8") as report:
        report.write("\n".join(stats.lines()) + "\n")
    print_summary(args, dataset, train_examples, eval_examples, stats, model, targets, micro, accum, precision, plan)

    # train
    guard = StopOnNonFiniteLoss()
    trainer = build_trainer(args, model, train_ds, eval_ds, collator, micro, accum, precision, [guard], plan)
    result = trainer.train(resume_from_checkpoint=True if args.resume else None)
    if guard.bad_step is not None:
        sys.exit(
            f"error: the training loss became NaN/inf at step {guard.bad_step}; nothing was saved as final. "
            "Lower --learning-rate (e.g. 5e-5), use --precision bf16 instead of fp16 (fp16 overflows), "
            "or check the data report for broken lines."
        )

    # save
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    metrics = dict(result.metrics)
    if len(eval_ds):
        metrics |= trainer.evaluate()
    if plan is not None:
        metrics["checkpoint_plan"] = plan.summary()
    metrics["log_history"] = trainer.state.log_history
    (args.output_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    plot_losses(trainer.state.log_history, args.output_dir / "loss.png")
    print(f"saved adapter, tokenizer, run_config.json, eval.txt, train_metrics.json and loss.png to {args.output_dir}")
    return model


if __name__ == "__main__":
    parser = build_parser()
    arguments = parser.parse_args()
    validate(arguments, parser)
    main(arguments)
