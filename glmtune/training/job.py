"""The QLoRA training job, in named stages: prepare the output folder → split the data → tokenize →
build the model → train → save. Each stage returns what the next ones need; `train` runs them in
order, for `glmtune.train` and for the command (`main`: `glmtune train`,
`chatglm_finetuning.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import device, distributed
from ..core.cli import RunOptions
from ..core.config import TrainConfig, resolve_lora_targets
from ..data.reading import (TRAIN_PROMPTS, Dataset, Example, read_dataset, split_eval, write_examples,
                            write_prompt_digests)
from ..core.errors import ConfigError, DataError, Diverged, Interrupted, TrainingError
from ..model.sources import needs_gpu, resolve_model_dir
from ..model.lora import attach_lora, check_rank, count_parameters
from .memory import CheckpointPlan, describe, fit_memory, strictest, uses_checkpointing
from ..model.prompts import PadCollator, TokenStats, tokenize_examples
from ..core.terminal import command
from ..core.files import free_space, write_atomic, write_failure
from ..core.folders import claim
from .runs import (FINISHED, RUN_CONFIG, RunRecord, clear_leftovers, file_sha256, last_checkpoint,
                   prepare_output_dir, trainer_state)

if TYPE_CHECKING:  # heavy imports, loaded by the stages that use them
    import datasets
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from transformers.trainer_utils import TrainOutput

    from .compiling import CompilePlan
    from .trainer import GroupedTrainer


# --- what each stage hands on ------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """The machine, the data and the output folder checked; the folder claimed and ready."""
    dataset: Dataset          # read and checked, before the folder was touched
    resume_from: Path | None  # the checkpoint this run continues from
    removed: tuple[str, ...]  # what making the folder ready removed or set aside, for the plan summary


@dataclass(frozen=True)
class Splits:
    """The examples split into training and held-out evaluation (both saved in the run folder)."""
    report: tuple[str, ...]  # the data report's lines so far
    train: list[Example]
    eval: list[Example]


@dataclass(frozen=True)
class Tokens:
    """The tokenizer and both splits as token ids and labels."""
    tokenizer: PreTrainedTokenizerFast
    train: datasets.Dataset
    eval: datasets.Dataset  # rows without an answer token within --max-length left out
    stats: TokenStats       # of the training split


@dataclass(frozen=True)
class Built:
    """The model ready to train, and how it fits memory."""
    model: Any  # the PeftModel: the base with fresh LoRA adapters
    collator: PadCollator
    plan: CheckpointPlan | None  # which layers recompute activations, when they are planned per batch
    compiling: CompilePlan


@dataclass(frozen=True)
class Trained:
    """Training done (or restored from the checkpoint of its final step)."""
    trainer: GroupedTrainer
    result: TrainOutput
    seconds: float
    compile_seconds: float
    tokens_per_s: float


@dataclass(frozen=True)
class TrainingResult:
    """A finished run, as `glmtune.train` returns it; its files are in `config.output_dir`."""
    config: TrainConfig
    record: RunRecord    # run_config.json as written last: the resolved settings, state finished
    plan_summary: str    # the screen the command prints before training
    model: Any           # the PeftModel with its trained adapter
    trainer: GroupedTrainer  # its state (steps, log history) and arguments
    metrics: dict        # train_metrics.json

    def final_summary(self) -> str:
        """What the user reads when training ends: losses, speed, where things are, what next."""
        out, metrics = self.config.output_dir, self.metrics
        history = self.trainer.state.log_history
        train_loss = next((h["loss"] for h in reversed(history) if "loss" in h), None)
        eval_loss = metrics.get("eval_loss")
        if train_loss is not None:
            losses = f"final train loss {train_loss:.4f}"
        else:  # restored from the final checkpoint of an earlier version, which logged no loss in a
            # run shorter than --logging-steps: only the run's mean was recorded
            losses = f"mean train loss {metrics.get('train_loss', float('nan')):.4f}"
        if eval_loss is not None:
            losses += f", eval loss {eval_loss:.4f} on {self.record.resolved.examples['eval']} held-out examples"
        minutes, seconds = divmod(round(metrics["train_seconds"]), 60)
        processes, tokens_per_s = distributed.world_size(), metrics["train_tokens_per_s"]
        each = f" ({tokens_per_s / processes:,.0f} per process)" if processes > 1 else ""
        lines = [
            f"finished   {self.trainer.state.global_step} steps in {minutes} min {seconds} s, "
            f"{tokens_per_s:,.0f} tokens/s{each}",
            f"losses     {losses}",
            f"saved      {out}: adapter, tokenizer, run_config.json, {self.record.resolved.eval_file}, "
            "train_metrics.json, loss.png",
        ]
        if self.trainer.memory_events:
            lines.append(f"memory     {len(self.trainer.memory_events)} micro-batches ran out of GPU memory and were "
                         "redone (train_metrics.json lists them)")
        if self.config.reporters():
            lines.append(f"logs       {', '.join(self.config.reporters())}"
                         + (f" ({command('tensorboard', '--logdir', out / 'runs')})"
                            if "tensorboard" in self.config.reporters() else ""))
        launcher = ["torchrun", "--nproc_per_node", str(processes), "-m"] if processes > 1 else []
        lines.append(f"next       {command(*launcher, 'glmtune', 'compare', '--adapter', out)}")
        return "\n".join(lines)


# --- checks before anything is written -----------------------------------------------------------

def resolve_prompt_format(choice: str, conversational: bool) -> str:
    if conversational and choice == "glm3":
        raise ConfigError("prompt_format", "glm3 has no system prompt or earlier turns, and this data has "
                                           "conversations; use chat (or auto)")
    if choice == "auto":
        return "chat" if conversational else "glm3"
    return choice


def check_hardware(config: TrainConfig) -> None:
    """What only the machine can tell: a GPU for a 6B model, and the precision it supports."""
    problem = device.check_precision(config.precision)
    if problem:
        raise ConfigError("precision", problem)
    if not device.cuda() and needs_gpu(config.model):
        raise ConfigError("model", f"{config.model} is a 6B-parameter model that needs a CUDA GPU, and none was "
                                   "found. For a CPU demo run: --model tiny")


def check_lora(config: TrainConfig) -> None:
    """The LoRA rank against the base's layer sizes (its config.json), and the weights with the
    adapters' training state against the memory free now, before any weight loads."""
    from ..model.loading import read_config
    from ..model.lora import training_bytes
    from ..model.placement import Shape, gib
    from .memory import MIN_MARGIN

    available = device.free_memory()
    if device.cuda() and config.gpu_memory:
        available = min(available, int(config.gpu_memory * 2**30))
    base = read_config(resolve_model_dir(config.model, weights=False))
    targets = resolve_lora_targets(config.lora_target)
    check_rank(config.lora_r, targets, base, available)
    if not device.cuda():
        return
    shape, nf4 = Shape.of(base), config.quantization == "nf4"
    weights = shape.weight_bytes(nf4, 2) + (shape.unpack_bytes(2) if nf4 else 0)
    needed = weights + training_bytes(config.lora_r, targets, base) + MIN_MARGIN
    if needed > available:
        instead = "" if nf4 else "--quantization nf4 (a third of the memory), "
        raise ConfigError(None, f"training {config.model} needs about {gib(needed)} of GPU memory before its first "
                                f"batch ({'NF4' if nf4 else '16-bit'} weights {gib(weights)}, LoRA weights and "
                                f"optimizer states), and {gib(available)} is free; use {instead}a GPU with more "
                                "memory, or free this one of other processes")


class FineTune:
    """One training run: its settings, its run record, and the claim on its output folder. Each
    stage takes what it needs from the earlier ones and returns what it made. Used as a context
    manager: on leaving, the output folder is free for other processes again."""

    def __init__(self, config: TrainConfig, config_file: Path | None = None,
                 callbacks: Sequence[TrainerCallback] = ()):
        self.config, self.out = config, config.output_dir
        self.record = RunRecord(config, "", config_file=str(config_file) if config_file else None)
        self.callbacks = list(callbacks)  # extra TrainerCallbacks (tests, benchmarks)
        # the lock on the output folder, taken by rank 0 in prepare and held until the job is left
        self.folder_lock = contextlib.ExitStack()

    def __enter__(self) -> FineTune:
        return self

    def __exit__(self, *exc) -> None:
        self.folder_lock.close()

    def prepare(self) -> Prepared:
        """Check the machine, the data and the model's tokenizer files, then make the output folder
        ready: a new run, the continuation of an interrupted one, or a refusal that says what to do."""
        from ..model.tokenizer import tokenizer_folder

        distributed.start()
        check_hardware(self.config)
        # Bad data or a model folder without its tokenizer must fail before the folder is touched:
        # --overwrite would otherwise have removed a finished run for nothing.
        dataset = read_dataset(self.config.data)
        self.record.resolved.prompt_format = resolve_prompt_format(self.config.prompt_format, dataset.conversational)
        tokenizer_folder(self.config.model)
        check_lora(self.config)
        self.record.data_sha256 = file_sha256(self.config.data)
        resume_from, removed = distributed.on_main(self._claim_output_dir)
        return Prepared(dataset, resume_from, tuple(removed))

    def _claim_output_dir(self) -> tuple[Path | None, list[str]]:
        lock = claim(self.out, "training")
        self.folder_lock.callback(lock.release)
        try:
            resume_from, done = prepare_output_dir(self.record)
        except BaseException:
            lock.abandon()
            raise
        done += clear_leftovers(self.out)
        self.record.files += [RUN_CONFIG, *(["runs"] if "tensorboard" in self.config.reporters() else [])]
        self.record.save(self.out)  # first of all, so an interrupted run is always recognised
        return resume_from, done

    def split(self, dataset: Dataset) -> Splits:
        """The data report and the eval split, held out and saved (the data was read and checked in
        prepare)."""
        train, held_out = split_eval(dataset.examples, self.config.eval_ratio, self.config.seed)
        splits = Splits(tuple(dataset.report_lines()), train, held_out)
        self.record.resolved.eval_file = distributed.on_main(lambda: self._write_data_files(dataset, splits))
        return splits

    def _write_data_files(self, dataset: Dataset, splits: Splits) -> str:
        # Listed before they are written, so that a kill in between leaves nothing --overwrite
        # would take for a user's file; the eval split's name depends on its examples.
        self.record.files += ["data_report.txt", "skipped_lines.txt", TRAIN_PROMPTS, "eval.txt", "eval.jsonl"]
        self.record.save(self.out)
        write_atomic(self.out / "data_report.txt", "\n".join(splits.report) + "\n")
        if dataset.skipped or dataset.duplicates:
            write_atomic(self.out / "skipped_lines.txt", dataset.skipped_report())
        write_prompt_digests(splits.train, self.out)
        written = write_examples(splits.eval, self.out).name
        unwritten = {"eval.txt", "eval.jsonl"} - {written}
        if not (dataset.skipped or dataset.duplicates):
            unwritten.add("skipped_lines.txt")
        self.record.files = [n for n in self.record.files if n not in unwritten]  # saved with the next record
        return written

    def tokenize(self, splits: Splits) -> Tokens:
        """The tokenizer, and the examples as token ids and labels; their statistics join the data report."""
        from ..model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.config.model)
        c, fmt = self.config, self.record.resolved.prompt_format
        train, stats = tokenize_examples(splits.train, tokenizer, fmt, c.max_length, c.train_on_prompt)
        if not len(train):
            raise DataError(f"{c.data}: no training row keeps an answer token within --max-length {c.max_length} "
                            f"({stats.where_and_fix()})")
        held_out, eval_stats = tokenize_examples(splits.eval, tokenizer, fmt, c.max_length, c.train_on_prompt)
        report = [*splits.report, *stats.lines()]
        if eval_stats.unanswered:
            report.append("eval split left out, no answer token within --max-length: " + eval_stats.where_and_fix())
        distributed.on_main(lambda: write_atomic(self.out / "data_report.txt", "\n".join(report) + "\n"))
        return Tokens(tokenizer, train, held_out, stats)

    def build(self, tokens: Tokens) -> Built:
        """The base (NF4 unless told otherwise) with LoRA adapters, and the batch that fits memory."""
        from transformers import set_seed

        from .compiling import compile_decoder_layers, plan_training_compile

        c, resolved = self.config, self.record.resolved
        set_seed(c.seed)
        device.limit_memory(c.gpu_memory)
        resolved.precision = device.resolve_precision(c.precision)
        resolved.lora_targets = resolve_lora_targets(c.lora_target)
        model = build_peft_model(c)
        collator = PadCollator(tokens.tokenizer.pad_token_id)
        processes = distributed.world_size()
        # --batch-size auto keeps the effective batch at --grad-accum however many processes share
        # it (validated to divide); a given micro-batch is per process, as in the HF Trainer.
        accum = c.grad_accum // processes if c.batch_size == "auto" else c.grad_accum
        micro, accum, plan = fit_memory(model, tokens.train, collator, c.batch_size, accum, c.gradient_checkpointing)
        rows = micro * accum  # per process and optimizer step
        # Every process must take the same micro-batches and checkpoint alike: the strictest fit wins.
        fits = distributed.gather((micro, plan))
        micro = min(m for m, _ in fits)  # a divisor of rows, as every candidate is
        accum = rows // micro
        plan = strictest([p for _, p in fits])
        resolved.micro_batch, resolved.grad_accum, resolved.processes = micro, accum, processes
        resolved.effective_batch = micro * accum * processes
        resolved.checkpointing = describe(c.gradient_checkpointing, plan)
        compiling = plan_training_compile(c.compile, tokens_to_train(c, resolved, tokens.train) / processes,
                                          c.model, device.cuda(), c.gradient_checkpointing)
        resolved.compile = compiling.reason
        if compiling.on:  # after the memory probes: they measure eager memory, which compiling only lowers
            compile_decoder_layers(model)
        resolved.examples = {"train": len(tokens.train), "eval": len(tokens.eval)}
        resolved.tokens = asdict(tokens.stats)
        distributed.on_main(lambda: self.record.save(self.out))
        return Built(model, collator, plan, compiling)

    def train(self, tokens: Tokens, built: Built, resume_from: Path | None) -> Trained:
        """Run the Trainer. Ctrl-C saves a checkpoint and raises Interrupted; a NaN loss raises
        Diverged; neither leaves a final adapter behind."""
        from .compiling import compile_seconds, record_compile_cost
        from .trainer import (GroupedTrainer, LogTheLastStep, StampCheckpoints, StopOnInterrupt,
                              StopOnNonFiniteLoss, training_arguments)

        r, compiling = self.record.resolved, built.compiling
        nan_guard, interrupt = StopOnNonFiniteLoss(), StopOnInterrupt()
        args = training_arguments(self.config, r.micro_batch, r.grad_accum, r.precision, len(tokens.eval) > 0)
        trainer = GroupedTrainer(
            model=built.model, args=args, train_dataset=tokens.train,
            eval_dataset=tokens.eval if len(tokens.eval) else None, data_collator=built.collator,
            callbacks=[LogTheLastStep(), nan_guard, interrupt, StampCheckpoints(self.record), *self.callbacks],
            checkpoint_plan=built.plan,
            compiled=compiling.on)
        device.reset_peak()  # the probes' peaks are not training's
        began, compiled_before = time.perf_counter(), compile_seconds()
        state = trainer_state(resume_from) if resume_from else {}  # complete: prepare checked it
        start_epoch = state.get("epoch") or 0.0
        if state and state["global_step"] >= state.get("max_steps", float("inf")):
            # The checkpoint of the run's final step: the run stopped during its final save.
            result = restore_last_checkpoint(built.model, trainer, resume_from)
        else:
            try:
                with self._stop_on_write_failure("a checkpoint"):
                    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            finally:
                interrupt.restore()
        seconds = time.perf_counter() - began
        compiled = compile_seconds() - compiled_before if compiling.on else 0.0
        if compiling.on and device.cuda() and compiled and distributed.is_main():
            record_compile_cost(compiling.key, compiled)
        epochs_run = max(0.0, (trainer.state.epoch or 0.0) - start_epoch)
        tokens_per_s = epochs_run * sum(tokens.train["length"]) / max(seconds, 1e-9)
        loss = result.training_loss
        diverged = (loss is not None and not math.isfinite(loss)) or not all(
            p.isfinite().all() for p in built.model.parameters() if p.requires_grad)
        diverged = distributed.any_process(diverged)  # each process's mean loss is its own: all stop, or none
        if nan_guard.bad_step is not None or diverged:
            # The guard sees logged losses only; a NaN between two logs, or a last update that
            # overflowed, shows in the run's mean loss or in the LoRA weights themselves.
            raise diverged_error(f"the training loss became NaN/inf (by step "
                                 f"{nan_guard.bad_step or trainer.state.global_step})")
        if interrupt.stopped_at is not None:
            step = interrupt.stopped_at
            raise Interrupted(f"stopped at step {step}; checkpoint-{step} is saved in {self.out}. Continue with the "
                              "same command and --resume", checkpoint=str(self.out / f"checkpoint-{step}"))
        return Trained(trainer, result, seconds, compiled, tokens_per_s)

    def save(self, tokens: Tokens, built: Built, trained: Trained) -> dict:
        """The adapter and tokenizer (moved into place whole), metrics, the loss plot, and the run
        record marked finished, last: a folder whose record says finished is complete. Every process
        evaluates its share; rank 0 writes. Returns the metrics, as train_metrics.json has them."""
        trainer = trained.trainer
        metrics = dict(trained.result.metrics)
        if len(tokens.eval):
            metrics |= trainer.evaluate()
            if not math.isfinite(metrics["eval_loss"]):  # weights blown up by the last update
                raise diverged_error("the eval loss is NaN/inf")
        if built.plan is not None:
            metrics["checkpoint_plan"] = built.plan.summary()
        peaks = distributed.gather(device.peak_gib())
        metrics |= {"train_seconds": trained.seconds, "train_tokens_per_s": trained.tokens_per_s,
                    "processes": distributed.world_size(), "peak_gpu_gib": max(peaks) if device.cuda() else None,
                    "compile": {"chosen": self.record.resolved.compile, "compile_seconds": trained.compile_seconds},
                    "out_of_memory_recoveries": trainer.memory_events,
                    "log_history": trainer.state.log_history}
        distributed.on_main(lambda: self._write_outputs(built.model, tokens.tokenizer, trainer, metrics))
        return metrics

    def _write_outputs(self, model, tokenizer: PreTrainedTokenizerFast, trainer: GroupedTrainer,
                       metrics: dict) -> None:
        from .plots import plot_losses

        with self._stop_on_write_failure("the adapter"), \
                tempfile.TemporaryDirectory(dir=self.out, prefix=".saving-") as scratch:
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            saved = list(Path(scratch).iterdir())
            self.record.files += [item.name for item in saved] + ["train_metrics.json", "loss.png"]
            self.record.save(self.out)  # listed before they are in place (see _write_data_files)
            for item in saved:
                item.replace(self.out / item.name)
        write_atomic(self.out / "train_metrics.json", json.dumps(metrics, indent=2) + "\n")
        plot_losses(trainer.state.log_history, self.out / "loss.png")
        self.record.state = FINISHED
        self.record.seal(self.out)
        self.record.save(self.out)

    @contextlib.contextmanager
    def _stop_on_write_failure(self, what: str):
        """A full disk while writing `what`: drop the checkpoint it cut short (unusable, and it holds
        space), and say where --resume will continue."""
        try:
            yield
        except Exception as err:
            reason = write_failure(err)
            if reason is None:
                raise
            done = clear_leftovers(self.out)  # what the failed write cut short (and frees its space)
            last = last_checkpoint(self.out)
            where = f"from {last.name}" if last else "from step 0 (no checkpoint was complete)"
            removed = f"; {'; '.join(done)}" if done else ""
            raise TrainingError(f"could not write {what} in {self.out}: {reason} ({free_space(self.out)}){removed}. "
                                f"Free some space and run the same command with --resume; it continues {where}"
                                ) from err


def tokens_to_train(config: TrainConfig, resolved, train: datasets.Dataset) -> float:
    """Tokens the run will train on (padding aside), for weighing the compile cost."""
    lengths = train["length"]
    if config.max_steps > 0:
        return config.max_steps * resolved.effective_batch * sum(lengths) / max(1, len(lengths))
    return config.epochs * sum(lengths)


def restore_last_checkpoint(model, trainer: GroupedTrainer, checkpoint: Path) -> TrainOutput:
    """Training ended but its final save did not (a kill or a full disk): the adapter and state
    come from the last checkpoint. Resuming the Trainer there would take one step too many."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # None in a checkpoint of an earlier version (no loss logged in a run shorter than --logging-steps):
    # the weights and eval loss are checked instead
    return TrainOutput(trainer.state.global_step, losses[-1] if losses else None, {})


def plan_summary(config: TrainConfig, record: RunRecord, prepared: Prepared, splits: Splits, tokens: Tokens,
                 built: Built) -> str:
    """The one screen printed before training: what will run, on what, into where."""
    c, r, d = config, record.resolved, prepared.dataset
    trainable, total = count_parameters(built.model)
    memory = f"; {device.allocated() / 2**30:.1f} GiB allocated after loading" if device.cuda() else ""
    resumed = f"; resuming from {prepared.resume_from.name}" if prepared.resume_from else ""
    if prepared.removed:
        resumed += f" ({'; '.join(prepared.removed)})"
    lines = [
        f"data       {c.data}: {len(d.examples)} examples used of {d.lines_read} lines read "
        f"({len(d.skipped)} skipped, {d.duplicates_removed} duplicates, {d.repaired} repaired)",
        f"split      {len(splits.train)} train / {len(splits.eval)} eval (seed {c.seed}); "
        f"prompt layout {r.prompt_format}",
        f"tokens     {'; '.join(tokens.stats.lines())}",
        f"model      {c.model} ({c.quantization}, {r.precision}); LoRA r={c.lora_r} alpha={c.lora_alpha} "
        f"on {', '.join(r.lora_targets)}",
        f"params     {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)",
        f"batch      {batch_product(r)} = effective {r.effective_batch}; length-grouped, dynamic padding",
        f"memory     activation checkpointing {r.checkpointing}{least_memory_hint()}",
        f"compile    {r.compile}",
        f"device     {f'{r.processes} x ' if r.processes > 1 else ''}{device.name()}{memory}",
        f"output     {c.output_dir}{resumed}",
    ]
    return "\n".join(["=" * 80, *lines, "=" * 80])


def batch_product(resolved) -> str:
    """How the effective batch is made: 'micro 4 x accum 2 x 2 processes'."""
    processes = f" x {resolved.processes} processes" if resolved.processes > 1 else ""
    return f"micro {resolved.micro_batch} x accum {resolved.grad_accum}{processes}"


def least_memory_hint() -> str:
    """On a small GPU, the flags that train in the least memory (slowest)."""
    if not device.cuda() or device.total_memory() >= device.SMALL_CARD:
        return ""
    return "; least memory (slowest): --batch-size 1 --gradient-checkpointing on"


def diverged_error(what: str) -> Diverged:
    return Diverged(f"{what}; no final adapter was saved. Lower --learning-rate (e.g. 5e-5), use --precision "
                         "bf16 instead of fp16 (fp16 overflows), or check the data report for broken lines")


def build_peft_model(config: TrainConfig):
    """The base model as training needs it (quantized, no KV cache, checkpointing installed where
    it may be used) with fresh LoRA adapters."""
    from ..model.loading import load_model

    model = load_model(config.model, quantization=None if config.quantization == "none" else "nf4",
                       dtype=device.dtype(config.precision))
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    if uses_checkpointing(config.gradient_checkpointing):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return attach_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout,
                       resolve_lora_targets(config.lora_target))


def train(config: TrainConfig, config_file: Path | None = None, callbacks: Sequence[TrainerCallback] = (),
          show: Callable[[str], None] | None = None) -> TrainingResult:
    """The training job's stages, in order: `glmtune.train`, and the command through `main`. `show`
    receives the plan summary before training starts; `callbacks` join the Trainer's own."""
    with FineTune(config, config_file, callbacks) as job:  # holds the output folder until it is left
        prepared = job.prepare()              # machine, data, tokenizer files; the folder: new, resumed or refused
        splits = job.split(prepared.dataset)  # data report, eval split
        tokens = job.tokenize(splits)         # tokenizer -> token ids and labels
        built = job.build(tokens)             # NF4 base + LoRA, batch fitted to memory
        plan = plan_summary(config, job.record, prepared, splits, tokens, built)
        if show:
            show(plan)
        trained = job.train(tokens, built, prepared.resume_from)  # Ctrl-C: Interrupted; NaN loss: Diverged
        metrics = job.save(tokens, built, trained)  # adapter, tokenizer, metrics, loss plot; run marked finished
    return TrainingResult(config, job.record, plan, built.model, trained.trainer, metrics)


def main(config: TrainConfig, options: RunOptions) -> None:
    """The training command (`chatglm_finetuning.py`, `glmtune train`): the plan on screen before
    training, the summary after."""
    result = train(config, options.config_file, show=lambda plan: print(plan, flush=True))
    print(result.final_summary())
