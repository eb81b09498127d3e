"""GPU benchmark on ChatGLM3-6B's real shape (random weights): training throughput and memory of the
seed recipe vs our defaults vs our low-memory setting, and the comparison script's speed.

On one GPU, with ../shared beside the repo (or --shared PATH):
    python bench/bench_gpu.py --part train      # ~4 min on an H200 (eager, then compiled), after the checkpoint
    python bench/bench_gpu.py --part cards      # the default command on simulated 6-24 GB cards; ~5 min
    python bench/bench_gpu.py --part compare    # the comparison script four ways; ~5 min on an H200
    python bench/bench_gpu.py --part export     # compare, then export its run in both layouts; +2 min
    python bench/bench_gpu.py --part ablate     # each speed setting on and off, side by side; ~3 min
    python bench/bench_gpu.py --part gpus       # default command: python, then torchrun on 1, 2, ... GPUs; ~3 min each
    python bench/bench_gpu.py --part knowledge  # the default comparison with CMMLU's 11 subjects (../shared); ~2 min
    python bench/bench_gpu.py --part small-cards  # comparison and chat on simulated 4, 6, 8 (and 2) GB cards; ~8 min
Each part builds (or reuses) a random-weight checkpoint in the ORIGINAL ChatGLM3 layout under
--workdir, prints a table and merges its numbers into bench/results/latest.json. Then, wherever the
JSON ends up:
    python bench/bench_gpu.py --record --results bench/results/latest.json   # appends to RESULTS.md
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback, TrainingArguments

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the GPU machine runs from a copy of the repo, without `pip install -e .`

import glmtune  # noqa: E402
from glmtune.core import device  # noqa: E402
from glmtune.model.loading import load_model  # noqa: E402
from glmtune.training.compiling import compile_decoder_layers, compile_seconds  # noqa: E402
from glmtune.core.config import TrainConfig  # noqa: E402
from glmtune.data.reading import Example, read_dataset, split_eval, write_examples, write_qa_lines  # noqa: E402
from glmtune.comparison.generation import Decoding, cast_adapters, generate_answers, warm_up  # noqa: E402
from glmtune.model.sources import resolve_model_dir  # noqa: E402
from glmtune.training.job import build_peft_model  # noqa: E402
from glmtune.core.config import NATIVE_TARGETS  # noqa: E402
from glmtune.training.memory import checkpoint_layers, decoder_layers, fit_memory  # noqa: E402
from glmtune.model.prompts import PadCollator, prompt_ids, tokenize_examples  # noqa: E402
from glmtune.training.runs import FINISHED, RunRecord, file_sha256, library_versions  # noqa: E402
from glmtune.model.tiny import random_original_weights  # noqa: E402
from glmtune.training.trainer import GroupedTrainer  # noqa: E402

CUDA = device.cuda()
OURS_PRECISION, SEED_PRECISION = ("bf16", "fp16") if CUDA else ("fp32", "fp32")


def build_checkpoint(shared: Path, folder: Path) -> Path:
    """ChatGLM3-6B's config, tensor names and shapes, random fp16 weights, 7 safetensors shards."""
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((shared / "chatglm3" / "config.json").read_text())
    expected = set(json.loads((shared / "chatglm3" / "pytorch_model.bin.index.json").read_text())["weight_map"])
    # A GPU draws the 6.2 billion values in seconds, a CPU in about a minute (12.5 GB of RAM).
    weights = random_original_weights(config, dtype=torch.float16, device="cuda" if torch.cuda.is_available() else "cpu")
    assert set(weights) == expected, set(weights) ^ expected
    names = sorted(weights)
    shards = [names[i::7] for i in range(7)]
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-00007.safetensors"
        save_file({n: weights[n].cpu().contiguous() for n in shard}, str(folder / file), metadata={"format": "pt"})
        weight_map |= {n: file for n in shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.model").write_bytes((shared / "chatglm3" / "tokenizer.model").read_bytes())
    return folder


def realistic_examples(shared: Path) -> list[Example]:
    """Our dataset plus the shared real Q&A: realistic medical lengths (~220 tokens)."""
    examples = list(read_dataset(REPO / "financial_data.txt").examples)
    for name in ("toyhom_internal_medicine_200.txt", "edge_cases.txt"):
        examples += read_dataset(shared / "realdata" / name).examples
    return examples


class StepClock(TrainerCallback):
    """Wall time and token counts at each optimizer step boundary (GPU synchronised)."""

    def __init__(self, counter):
        self.counter, self.marks = counter, []

    def on_step_end(self, args, state, control, **kwargs):
        device.synchronize()
        self.marks.append((time.perf_counter(), self.counter.real, self.counter.padded))


class CountingCollator:
    def __init__(self, inner):
        self.inner, self.real, self.padded = inner, 0, 0

    def __call__(self, rows):
        batch = self.inner(rows)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()
        return batch


class PadToMax(PadCollator):
    """The seed recipe: every row padded to max_length."""

    def __init__(self, pad_id, max_length):
        super().__init__(pad_id, multiple_of=max_length)


def lora_snapshot(model):
    """A function that puts the trainable (LoRA) weights back as they are now, so that every mode
    starts from the same weights: with the same data and seed, their losses must then agree."""
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def reset():
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in initial:
                    p.copy_(initial[n])

    reset.initial = initial  # cleared before a row whose peak memory must not include the copy
    return reset


def random_lora() -> LoraConfig:
    """The default LoRA shape with random (not zero) B, so the adapter changes the outputs."""
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, init_lora_weights=False, task_type="CAUSAL_LM",
                      target_modules=list(NATIVE_TARGETS))


def training_setup(args, ckpt: Path, shared: Path):
    """Default settings, tokenizer, examples, their dataset and stats, the NF4+LoRA model (built as
    the training job builds it), load time."""
    config = TrainConfig(model=str(ckpt), output_dir=args.workdir / "run")
    tokenizer = glmtune.load_tokenizer(ckpt)
    examples = realistic_examples(shared)
    dataset, stats = tokenize_examples(examples, tokenizer, "glm3", 1024, False)
    began = time.perf_counter()
    model = build_peft_model(config)
    return config, tokenizer, examples, dataset, stats, model, time.perf_counter() - began


def fit(config: TrainConfig, model, dataset, collator):
    return fit_memory(model, dataset, collator, config.batch_size, config.grad_accum, config.gradient_checkpointing)


def timed_training(name, model, dataset, collator, micro, accum, precision, steps, warmup, grouped, workdir,
                   plan=None):
    counter = CountingCollator(collator)
    clock = StepClock(counter)
    training_args = TrainingArguments(
        output_dir=str(workdir / name), max_steps=warmup + steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, learning_rate=1e-4, warmup_steps=0.03, bf16=precision == "bf16",
        fp16=precision == "fp16", save_strategy="no", logging_steps=1, report_to="none",
        remove_unused_columns=False, disable_tqdm=True, seed=0,
    )
    extra = {"checkpoint_plan": plan} if grouped else {}
    trainer_class = GroupedTrainer if grouped else Trainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset, data_collator=counter,
                            callbacks=[clock], **extra)
    gc.collect()  # the previous mode's optimizer state, so the peak is this mode's alone
    device.empty_cache()
    device.reset_peak()
    trainer.train()
    (t0, r0, p0), (t1, r1, p1) = clock.marks[warmup - 1], clock.marks[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "mode": name, "micro_batch": micro, "grad_accum": accum, "precision": precision,
        "step_s": (t1 - t0) / steps, "real_tok_s": (r1 - r0) / (t1 - t0), "padded_fraction": 1 - (r1 - r0) / (p1 - p0),
        "peak_gib": device.peak_gib() or 0.0, "losses": losses, "checkpoint_plan": plan.summary() if plan else None,
    }


def profile_step(model, dataset, collator, micro: int, plan=None) -> dict:
    """One forward+backward of a median-length micro-batch under the profiler: how many kernels it
    launches, how much of the wall time the GPU is busy, and which operators take the CPU's time."""
    from torch.profiler import ProfilerActivity, profile

    rows = sorted(range(len(dataset)), key=lambda i: dataset[i]["length"])[len(dataset) // 2:][:micro]
    batch = {k: v.cuda() for k, v in collator([dataset[i] for i in rows]).items()}
    if plan is not None:
        plan.apply(decoder_layers(model), batch["input_ids"].numel())
    model.train()
    for _ in range(2):  # warm-up, then the profiled pass
        device.synchronize()
        began = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.autocast("cuda", dtype=torch.bfloat16):
            model(**batch).loss.backward()
        device.synchronize()
        wall = time.perf_counter() - began
        model.zero_grad(set_to_none=True)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6
    top = {}
    for e in kernels:
        top[e.name[:60]] = top.get(e.name[:60], 0) + e.device_time / 1e6
    with profile(activities=[ProfilerActivity.CPU]) as cpu_prof, torch.autocast("cuda", dtype=torch.bfloat16):
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    cpu_ops = sorted(cpu_prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    return {"tokens": int(batch["attention_mask"].sum()), "padded_tokens": batch["input_ids"].numel(),
            "wall_s": wall, "gpu_busy_s": busy, "kernels": len(kernels),
            "top_kernels_s": dict(sorted(top.items(), key=lambda kv: -kv[1])[:12]),
            "top_cpu_ops": {e.key[:60]: {"calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6}
                            for e in cpu_ops}}


def part_train(args, ckpt: Path, shared: Path) -> dict:
    parsed, tokenizer, examples, dataset, stats, model, load_s = training_setup(args, ckpt, shared)
    pad = tokenizer.pad_token_id
    results = {"load_nf4_s": load_s, "median_tokens": stats.median, "max_tokens": stats.max}
    # Checkpointing recomputes exactly, so ours and ours_ckpt_all, from the same start, must agree.
    reset = lora_snapshot(model)

    # ours, default flags: batch and checkpointing fitted exactly as chatglm_finetuning.py does
    began = time.perf_counter()
    micro, accum, plan = fit(parsed, model, dataset, PadCollator(pad))
    results["fit_s"] = time.perf_counter() - began
    # An untimed pass over the very batches the modes below run (same seed, same order): the first
    # pass over each new batch shape pays one-off costs (library kernel choice, allocator growth)
    # that a real run amortises over thousands of steps, and whichever mode ran first would carry them.
    timed_training("shape_warmup", model, dataset, PadCollator(pad), micro, accum, OURS_PRECISION,
                   args.steps, args.warmup, True, args.workdir, plan)
    if plan:
        plan.used.clear()
    reset()
    results["ours"] = timed_training("ours", model, dataset, PadCollator(pad), micro, accum, OURS_PRECISION,
                                     args.steps, args.warmup, True, args.workdir, plan)
    if CUDA:
        results["profile_ours"] = profile_step(model, dataset, PadCollator(pad), micro, plan)
    results |= compiled_rows(args, model, dataset, PadCollator(pad), micro, accum, plan, reset)
    with torch.compiler.set_stance("force_eager"):  # the rows below run eagerly, as in earlier runs
        results |= eager_rows(args, model, tokenizer, examples, dataset, micro, accum, reset, results["ours"])
    return results


def eager_rows(args, model, tokenizer, examples, dataset, micro, accum, reset, ours) -> dict:
    """Every layer checkpointed; the seed's recipe; the low-memory setting."""
    pad, results = tokenizer.pad_token_id, {}
    # the same with every layer checkpointed on every step (the seed's setting, our previous default)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    reset()
    results["ours_ckpt_all"] = timed_training("ours_ckpt_all", model, dataset, PadCollator(pad), micro, accum,
                                              OURS_PRECISION, args.steps, args.warmup, True, args.workdir)
    pairs = list(zip(ours["losses"], results["ours_ckpt_all"]["losses"]))
    results["loss_max_abs_diff_ours_vs_ckpt_all"] = max(abs(a - b) for a, b in pairs)
    # the seed recipe: pad to 1024, micro-batch 1, fp16, random order, every layer checkpointed
    for module in model.modules():
        if hasattr(module, "compute_dtype"):
            module.compute_dtype = torch.float16
    reset()
    results["seed"] = timed_training("seed", model, dataset, PadToMax(pad, 1024), 1, 16, SEED_PRECISION,
                                     max(1, args.steps // 2), args.warmup, False, args.workdir)
    for module in model.modules():
        if hasattr(module, "compute_dtype"):
            module.compute_dtype = torch.bfloat16
    # low memory: micro-batch 1 on full 1,024-token samples, every layer checkpointed (the last row:
    # the starting weights' copy is dropped first, as no training run holds one)
    reset.initial.clear()
    long_text = "".join(ex.answer for ex in examples[:40])
    long = [Example(ex.question, long_text, 0) for ex in examples[:64]]
    long_ds, _ = tokenize_examples(long, tokenizer, "glm3", 1024, False)
    results["lowmem"] = timed_training("lowmem", model, long_ds, PadCollator(pad), 1, 4, OURS_PRECISION,
                                       2, 1, True, args.workdir)
    return results


def compile_and_warm_up(args, model, dataset, collator, micro, accum, plan) -> dict:
    """Compile the decoder layers and run the timed modes' batches once untimed with the plan, so
    that the timed passes compile nothing; the wall time of it all, and the part torch's compiler
    counts."""
    compiled_before, began = compile_seconds(), time.perf_counter()
    compile_decoder_layers(model)
    timed_training("compile_warmup", model, dataset, collator, micro, accum, OURS_PRECISION, args.steps,
                   args.warmup, True, args.workdir, plan)
    return {"compile_warmup_s": time.perf_counter() - began, "compile_s": compile_seconds() - compiled_before}


def compiled_rows(args, model, dataset, collator, micro, accum, plan, reset) -> dict:
    """The default rows again with every decoder layer compiled: an untimed pass over the same
    batches compiles (its wall time and torch's own compile time are kept), then the timed pass;
    then the numbers, with LoRA dropout off (compiled code draws other random masks): the same
    steps eager and compiled, from the same start."""
    compiled_before = compile_seconds()
    reset()
    results = compile_and_warm_up(args, model, dataset, collator, micro, accum, plan)
    if plan:
        plan.used.clear()
    reset()
    results["ours_compiled"] = timed_training("ours_compiled", model, dataset, collator, micro, accum, OURS_PRECISION,
                                              args.steps, args.warmup, True, args.workdir, plan)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in dropouts:
        m.p = 0.0
    losses = {}
    for name, stance in (("eager", "force_eager"), ("compiled", "default")):
        reset()
        with torch.compiler.set_stance(stance):
            losses[name] = timed_training(f"{name}_no_dropout", model, dataset, collator, micro, accum, OURS_PRECISION,
                                          args.steps, args.warmup, True, args.workdir, plan)["losses"]
    for m in dropouts:
        m.p = 0.1
    results["no_dropout_losses"] = losses
    results["loss_max_abs_diff_compiled_vs_eager"] = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"]))
    results["compile_s_total"] = compile_seconds() - compiled_before  # with the recompile for dropout off
    return results


def part_ablate(args, ckpt: Path, shared: Path) -> dict:
    """Each speed setting on and off, side by side on one loaded model: the per-micro-batch
    checkpoint plan and compiled decoder layers in training (same data, init and seed for every
    mode), and bf16 adapter weights in batched decoding."""
    parsed, tokenizer, examples, dataset, _, model, _ = training_setup(args, ckpt, shared)
    pad = tokenizer.pad_token_id
    reset = lora_snapshot(model)
    micro, accum, plan = fit(parsed, model, dataset, PadCollator(pad))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    results = {"train": {}, "decode": {}}

    def train_mode(name, mode):
        reset()
        checkpoint_layers(layers, len(layers))
        results["train"][name] = timed_training(name, model, dataset, PadCollator(pad), micro, accum, OURS_PRECISION,
                                                args.steps, args.warmup, True, args.workdir,
                                                plan if mode == "plan" else None)

    for i, mode in enumerate(("ckpt_all", "plan")):
        train_mode(f"{i}_{mode}_eager", mode)
    # checkpointed layers run eagerly, so the plan's batches are all there is to compile
    results |= compile_and_warm_up(args, model, dataset, PadCollator(pad), micro, accum, plan)
    for i, mode in enumerate(("plan", "ckpt_all"), 2):
        train_mode(f"{i}_{mode}_compiled", mode)
    del model
    gc.collect()
    device.empty_cache()

    model = get_peft_model(load_model(ckpt, quantization="nf4"), random_lora()).eval()
    prompts = [prompt_ids(tokenizer, ex.question, "glm3") for ex in examples[: args.prompts]]
    decoding = Decoding(max_new_tokens=64)

    def timed(label):
        device.synchronize()
        began = time.perf_counter()
        answers = generate_answers(model, tokenizer, prompts, decoding, batch_size=len(prompts), desc=label)
        wall = time.perf_counter() - began
        new = sum(a.new_tokens for a in answers)
        results["decode"][label] = {"wall_s": wall, "new_tokens": new, "tok_per_s": new / wall}
        return [a.text for a in answers]

    warm_up(model, tokenizer, prompts, decoding, len(prompts))
    with model.disable_adapter():
        timed("base")
    fp32 = timed("tuned_fp32_adapter")
    cast_adapters(model, torch.bfloat16)
    bf16 = timed("tuned_bf16_adapter")
    results["decode"]["same_answers_fp32_vs_bf16"] = sum(a == b for a, b in zip(fp32, bf16))
    results["decode"]["prompts"], results["decode"]["new_tokens_each"] = len(prompts), 64
    return results


def compare_adapter(args, ckpt: Path, shared: Path) -> Path:
    """A random LoRA adapter of ours in a finished run folder whose eval split is the one a default
    run holds out (financial_data.txt, --eval-ratio 0.05, seed 42), and 200 realistic prompts beside it."""
    adapter = args.workdir / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        model = load_model(ckpt, quantization="nf4")
        get_peft_model(model, random_lora()).save_pretrained(adapter, save_embedding_layers=False)
        del model
    glmtune.load_tokenizer(ckpt).save_pretrained(adapter)
    _, held_out = split_eval(read_dataset(REPO / "financial_data.txt").examples, 0.05, 42)
    eval_file = write_examples(held_out, adapter)
    write_qa_lines(realistic_examples(shared)[: args.prompts], args.workdir / "prompts_200.txt")
    record = RunRecord(TrainConfig(model=str(ckpt), output_dir=adapter), file_sha256(eval_file), FINISHED)
    record.resolved.prompt_format, record.resolved.eval_file = "glm3", eval_file.name
    record.save(adapter)
    return adapter


def compare_process(adapter: Path, folder: Path, flags: list[str]) -> tuple[float, dict]:
    """The comparison script as a user runs it: (its wall seconds, its JSON report)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "chatglm_finetuning_tst.py"), "--adapter", str(adapter), *flags,
                    "--output", str(folder), "--overwrite"], check=True)
    wall = time.perf_counter() - began
    return wall, json.loads((folder / "chatglm_comparison.json").read_text(encoding="utf-8"))


def part_compare(args, ckpt: Path, shared: Path) -> dict:
    """The comparison script, whole process, as users run it, with a random LoRA adapter of ours:
    the default command on a default run's held-out split (27 prompts), the same on NF4 (the path
    for small cards), 200 prompts x 256 tokens, and one prompt at a time."""
    adapter = compare_adapter(args, ckpt, shared)
    many = args.workdir / "prompts_200.txt"
    results = {}
    for label, flags in (("default", []),
                         ("default_nf4", ["--quantization", "nf4"]),
                         ("batched", ["--data", str(many), "--num-samples", str(args.prompts),
                                      "--max-new-tokens", str(args.new_tokens)]),
                         ("one_at_a_time", ["--num-samples", "8", "--batch-size", "1"])):
        wall, report = compare_process(adapter, args.workdir / f"compare_{label}", flags)
        timing, settings = report["timing"], report["settings"]
        results[label] = {"flags": " ".join(flags) or "(defaults)", "prompts": settings["prompts"],
                          "max_new_tokens": settings["max_new_tokens"], "process_wall_s": wall,
                          "weights": timing["weights"], "decoding": timing["decoding"],
                          "warm_up_s": timing["warm_up_s"], "compiled": timing["compiled"],
                          "load_s": timing["load_s"], "score_s": timing["score_s"],
                          **{f"{side}_{k}": v for side in ("base", "tuned") for k, v in timing[side].items()}}
    return results


def part_knowledge(args, ckpt: Path, shared: Path) -> dict:
    """The default comparison with the knowledge check on CMMLU's 11 subjects in ../shared (1,501
    medical and 781 general questions per side), on 16-bit weights (the default here) and on NF4."""
    adapter = compare_adapter(args, ckpt, shared)
    cmmlu = shared / "benchmarks" / "cmmlu"
    results = {}
    for label, flags in (("default", []), ("nf4", ["--quantization", "nf4"])):
        wall, report = compare_process(adapter, args.workdir / f"knowledge_{label}", ["--benchmark", str(cmmlu), *flags])
        k = report["aggregate"]["knowledge"]
        seconds = k["seconds"]["base"] + k["seconds"]["tuned"]
        results[label] = {"device": report["settings"]["device"], "date": time.strftime("%Y-%m-%d"),
                          "process_wall_s": wall, "weights": report["timing"]["weights"], "questions": k["questions"],
                          "base_s": k["seconds"]["base"], "tuned_s": k["seconds"]["tuned"], "check_s": seconds,
                          "questions_per_s": 2 * k["questions"] / seconds,
                          "generation_s": report["timing"]["base"]["wall_s"] + report["timing"]["tuned"]["wall_s"],
                          "groups": [{f: g[f] for f in ("name", "n", "chance", "base", "tuned", "fixed", "broke")}
                                     | {"difference": g["difference"]} for g in k["groups"]],
                          "verdict": report["aggregate"]["verdict"]}
    return results


SMALL_CARDS_GB = (4, 6, 8)
CHAT_TURN = "头痛三天了，还有点恶心，怎么办？"


class GpuPeak:
    """The most GPU memory a process held (CUDA context included), polled with nvidia-smi; None
    where nvidia-smi does not list this container's processes."""

    def __init__(self, pid: int):
        self.pid, self.peak_mib, self.done = pid, None, False
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.done:
            try:
                listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,"
                                         "noheader,nounits"], capture_output=True, text=True).stdout
            except OSError:  # no nvidia-smi (the CPU smoke run)
                return
            for line in listed.splitlines():
                pid, used = (part.strip() for part in line.split(","))
                if pid == str(self.pid):
                    self.peak_mib = max(self.peak_mib or 0, int(used))
            time.sleep(0.2)

    def stop(self) -> float | None:
        self.done = True
        self.thread.join()
        return None if self.peak_mib is None else self.peak_mib / 1024


def comparison_script(adapter: Path, flags: list[str], **popen) -> tuple[subprocess.Popen, GpuPeak]:
    """chatglm_finetuning_tst.py started as a user starts it, its output in one pipe, its GPU memory polled."""
    proc = subprocess.Popen([sys.executable, str(REPO / "chatglm_finetuning_tst.py"), "--adapter", str(adapter),
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    return proc, GpuPeak(proc.pid)


def last_line(text: str) -> str:
    """What a failed command said last: its one-line error."""
    return (text.strip().splitlines() or ["?"])[-1]


def small_card_compare(adapter: Path, folder: Path, flags: list[str]) -> dict:
    """The comparison script as users run it, whole process: its wall time, peaks, weights line and
    answers; or its exit code and last line where it refused."""
    began = time.perf_counter()
    proc, peak = comparison_script(adapter, [*flags, "--output", str(folder), "--overwrite"], text=True)
    output, _ = proc.communicate()
    row = {"flags": " ".join(flags), "process_wall_s": time.perf_counter() - began, "exit": proc.returncode,
           "process_peak_gib": peak.stop()}
    if proc.returncode:
        return row | {"last_line": last_line(output)}
    report = json.loads((folder / "chatglm_comparison.json").read_text(encoding="utf-8"))
    timing = report["timing"]
    return row | {"weights": timing["weights"], "load_s": timing["load_s"],
                  "side_peak_gib": max(timing[side]["peak_gpu_gib"] or 0 for side in ("base", "tuned")),
                  "tuned_tok_per_s": timing["tuned"]["tok_per_s"],
                  "answers": [[r[side]["answer"] for side in ("base", "tuned")] for r in report["samples"]]}


def small_card_chat(adapter: Path, flags: list[str]) -> dict:
    """The chat as users start it, one question piped in: seconds from the command to the first
    token of the answer on screen, and to its end."""
    began = time.perf_counter()
    proc, peak = comparison_script(adapter, ["--chat", *flags], stdin=subprocess.PIPE)
    proc.stdin.write(f"{CHAT_TURN}\n/exit\n".encode())
    proc.stdin.close()
    seen, first = b"", None
    while chunk := proc.stdout.read1(4096):
        seen += chunk
        answer = seen.split(b"[fine-tuned] ", 1)
        if first is None and len(answer) == 2 and answer[1].strip():
            first = time.perf_counter() - began
    proc.wait()
    text = seen.decode(errors="replace")
    row = {"flags": " ".join(flags), "exit": proc.returncode, "first_answer_s": first,
           "process_wall_s": time.perf_counter() - began, "process_peak_gib": peak.stop(),
           "weights": next((line for line in text.splitlines() if line.startswith("weights:")), None)}
    return row | ({"last_line": last_line(text)} if proc.returncode else {})


def part_small_cards(args, ckpt: Path, shared: Path) -> dict:
    """The default comparison (--small-card-tokens new tokens: random weights never stop, and a 4 GB
    card answers one prompt at a time) and the chat, whole processes, on simulated 4, 6 and 8 GB cards
    (--gpu-memory caps what PyTorch may use, and free memory is reported within it), then a 2 GB
    card that must be refused in one line. Answers are compared with NF4 on the whole GPU, one
    prompt at a time as the 4 GB card runs them (batching alone changes NF4's kernels), and in
    the default batch."""
    adapter = compare_adapter(args, ckpt, shared)
    tokens = ["--max-new-tokens", str(args.small_card_tokens)]
    results = {"max_new_tokens": args.small_card_tokens,
               "reference_b1": small_card_compare(adapter, args.workdir / "small_ref_b1",
                                                  ["--quantization", "nf4", "--batch-size", "1", *tokens])}
    for card in (4, 2, *SMALL_CARDS_GB[1:]):  # the cards at stake first, should the run be cut short
        cap = ["--gpu-memory", str(usable_gib(card))]
        row = {"usable_gib": usable_gib(card),
               "compare": small_card_compare(adapter, args.workdir / f"small_{card}GB", [*cap, *tokens]),
               "chat": small_card_chat(adapter, cap)}
        answers = row["compare"].get("answers")
        if answers:
            row["compare"]["changed_vs_reference_b1"] = changed(answers, results["reference_b1"]["answers"])
        results[f"{card}GB"] = row
        print(json.dumps({card: {k: {f: v for f, v in r.items() if f != "answers"} for k, r in row.items()
                                 if isinstance(r, dict)}}, ensure_ascii=False), flush=True)
    results["reference"] = small_card_compare(adapter, args.workdir / "small_ref", ["--quantization", "nf4", *tokens])
    results["batching_changed"] = changed(results["reference"]["answers"], results["reference_b1"]["answers"])
    return results


def changed(answers: list[list[str]], reference: list[list[str]]) -> float:
    """The share of answers (both sides of every prompt) whose text differs from the reference's."""
    pairs = [(a, b) for mine, theirs in zip(answers, reference) for a, b in zip(mine, theirs)]
    return sum(a != b for a, b in pairs) / len(pairs)


CARDS_GB = (6, 8, 12, 16, 24)


def usable_gib(card_gb: int) -> float:
    """What PyTorch gets of a card: a little under its size, less ~0.6 GiB of CUDA context (a 6 GB
    laptop card leaves about 5.3 GiB)."""
    return round(card_gb * 0.98 - 0.6, 2)


def part_cards(args, ckpt: Path, shared: Path) -> dict:
    """chatglm_finetuning.py with default flags, whole process, on simulated cards (--gpu-memory caps
    what PyTorch may use) for one epoch over rows up to 1,024 tokens (half of them that long, so
    the longest micro-batches are real); then the default 3-epoch run on financial_data.txt on the
    whole GPU, load to saved adapter."""
    tokenizer = glmtune.load_tokenizer(ckpt)
    examples = realistic_examples(shared)
    long_text = "".join(ex.answer for ex in examples[:40])
    rows = [Example(ex.question, long_text, 0) for ex in examples[:64]] + examples[64:128]
    data = args.workdir / "cards.txt"
    write_qa_lines(rows, data)
    stats = tokenize_examples(rows, tokenizer, "glm3", 1024, False)[1]
    results = {"rows": len(rows), "max_tokens": stats.max, "median_tokens": stats.median}

    for card in CARDS_GB:
        results[f"{card}GB"] = {"usable_gib": usable_gib(card)} | training_run(
            0, ckpt, args.workdir / f"cards_{card}GB",
            ["--data", str(data), "--epochs", "1", "--gpu-memory", str(usable_gib(card)), "--save-steps", "1000"])
        print(json.dumps({card: results[f"{card}GB"]}), flush=True)
    results["default_run"] = training_run(0, ckpt, args.workdir / "cards_default",
                                          ["--data", str(REPO / "financial_data.txt"), "--save-steps", "1000"])
    return results


def launched(gpus: int) -> list[str]:
    """The command prefix that starts the scripts: plain python (0), or torchrun with `gpus` processes."""
    if gpus == 0:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus)]


def training_run(gpus: int, ckpt: Path, out: Path, flags: list[str]) -> dict:
    """chatglm_finetuning.py as users start it (`launched(gpus)`), whole process: what it chose and
    measured, from its run record and metrics; or its last error line."""
    began = time.perf_counter()
    done = subprocess.run([*launched(gpus), str(REPO / "chatglm_finetuning.py"), "--model", str(ckpt),
                           "--output-dir", str(out), "--overwrite", *flags], capture_output=True, text=True)
    row = {"flags": " ".join(flags), "process_wall_s": time.perf_counter() - began, "exit": done.returncode}
    if done.returncode:
        row["error"] = last_line(done.stderr)
        print(done.stderr[-3000:], flush=True)
        return row
    r = RunRecord.load(out).resolved
    metrics = json.loads((out / "train_metrics.json").read_text())
    return row | {"processes": r.processes, "micro_batch": r.micro_batch, "grad_accum": r.grad_accum,
                  "effective_batch": r.effective_batch, "checkpointing": r.checkpointing, "compile": r.compile,
                  "peak_gib": metrics["peak_gpu_gib"], "real_tok_s": metrics["train_tokens_per_s"],
                  "train_s": metrics["train_seconds"], "eval_loss": metrics.get("eval_loss"),
                  "recoveries": metrics["out_of_memory_recoveries"],
                  "plan": metrics.get("checkpoint_plan", {}).get("checkpointed_layers_per_micro_batch")}


def part_gpus(args, ckpt: Path, shared: Path) -> dict:
    """The default 3-epoch command on financial_data.txt, whole process, started by plain python, by
    torchrun with one process, and by torchrun with each larger power of two up to every GPU; then
    the comparison on its eval split the same ways. Scaling efficiency: tokens/s with N GPUs over
    N x tokens/s with torchrun on one."""
    available = torch.cuda.device_count() if CUDA else 2  # --smoke: two CPU processes (gloo)
    counts = [0] + [n for n in (1, 2, 4, 8) if n <= available]
    results = {"gpus_available": available, "train": {}, "compare": {}}
    for gpus in counts:
        label = f"torchrun_{gpus}" if gpus else "python"
        results["train"][label] = training_run(gpus, ckpt, args.workdir / f"gpus_{label}",
                                               ["--data", str(REPO / "financial_data.txt")])
        print(json.dumps({label: results["train"][label]}), flush=True)
        if results["train"][label]["exit"]:
            continue
        folder = args.workdir / f"gpus_compare_{label}"
        began = time.perf_counter()
        done = subprocess.run([*launched(gpus), str(REPO / "chatglm_finetuning_tst.py"), "--adapter",
                               str(args.workdir / "gpus_python"), "--output", str(folder), "--overwrite"],
                              capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], flush=True)
            results["compare"][label] = {"exit": done.returncode, "error": done.stderr[-3000:]}
            continue
        report = json.loads((folder / "chatglm_comparison.json").read_text(encoding="utf-8"))
        results["compare"][label] = {"process_wall_s": time.perf_counter() - began,
                                     "prompts": report["settings"]["prompts"],
                                     "base_tok_per_s": report["timing"]["base"]["tok_per_s"],
                                     "tuned_tok_per_s": report["timing"]["tuned"]["tok_per_s"],
                                     "answers": [s["tuned"]["answer"] for s in report["samples"]]}
    one = results["train"].get("torchrun_1", {}).get("real_tok_s")
    for label, row in results["train"].items():
        if one and row.get("real_tok_s") and row.get("processes", 1) > 1:
            row["scaling_efficiency"] = row["real_tok_s"] / (row["processes"] * one)
    reference = results["compare"].get("python", {}).get("answers")
    for row in results["compare"].values():
        if reference and "answers" in row:
            row["same_answers_as_python"] = sum(a == b for a, b in zip(row["answers"], reference))
    return results


def part_export(args, ckpt: Path, shared: Path) -> dict:
    """`python -m glmtune.export` of the comparison's run (random LoRA on the 6B checkpoint), both
    layouts: time per stage, peak GPU memory, size on disk. Each export is deleted once measured."""
    import shutil

    from glmtune.core.config import ExportConfig
    from glmtune.export.job import export

    results = {}
    for fmt in ("native", "chatglm"):
        out = args.workdir / f"export_{fmt}"
        r = export(ExportConfig(adapter=args.workdir / "adapter", output=out, format=fmt, overwrite=True))
        results[fmt] = {"device": r.device, "seconds": r.seconds, "peak_gpu_gib": r.peak_gpu_gib,
                        "disk_gib": r.bytes / 2**30, "files": len(r.files), "parameters": r.parameters}
        shutil.rmtree(out)
        gc.collect()
        torch.cuda.empty_cache()
    return results


def table(results: dict) -> list[str]:
    lines = []
    if "train" in results:
        t = results["train"]
        lines += [f"{'training (6B, NF4, LoRA r=16)':34} {'micro x acc':>11} {'real tok/s':>10} {'padded':>7} "
                  f"{'step s':>7} {'peak GiB':>8}"]
        for key in ("seed", "ours_ckpt_all", "ours", "ours_compiled", "lowmem"):
            if key not in t:
                continue
            r = t[key]
            lines.append(f"{key + ' (' + r['precision'] + ')':34} {str(r['micro_batch']) + ' x ' + str(r['grad_accum']):>11} "
                         f"{r['real_tok_s']:>10.0f} {100 * r['padded_fraction']:>6.0f}% {r['step_s']:>7.2f} "
                         f"{r['peak_gib']:>8.2f}")
        lines.append(f"ours / seed recipe: {t['ours']['real_tok_s'] / t['seed']['real_tok_s']:.1f}x real tokens/s")
        if "ours_compiled" in t:
            lines.append(f"ours_compiled / seed recipe: {t['ours_compiled']['real_tok_s'] / t['seed']['real_tok_s']:.1f}x; "
                         f"/ ours (eager): {t['ours_compiled']['real_tok_s'] / t['ours']['real_tok_s']:.2f}x; compile "
                         f"warm-up {t['compile_warmup_s']:.0f} s wall ({t['compile_s']:.0f} s compiling); no-dropout "
                         f"losses compiled vs eager: max |difference| {t['loss_max_abs_diff_compiled_vs_eager']:.4f} "
                         f"over {len(t['no_dropout_losses']['eager'])} steps")
        if "ours_ckpt_all" in t:
            lines.append(f"ours / ours_ckpt_all: {t['ours']['real_tok_s'] / t['ours_ckpt_all']['real_tok_s']:.2f}x; "
                         f"max |loss difference| over {len(t['ours']['losses'])} steps: "
                         f"{t['loss_max_abs_diff_ours_vs_ckpt_all']:.4f}")
        plan = t["ours"].get("checkpoint_plan")
        if plan:
            lines.append(f"ours checkpoint plan: {plan['per_token_mib']['none_checkpointed']:.2f} MiB/token without, "
                         f"{plan['per_token_mib']['all_checkpointed']:.2f} with all {plan['layers']} layers; "
                         f"checkpointed layers per micro-batch {plan['checkpointed_layers_per_micro_batch']}")
        if "profile_ours" in t:
            p = t["profile_ours"]
            lines.append(f"profile of one ours micro-batch ({p['tokens']} tokens): {p['kernels']} kernels, GPU busy "
                         f"{p['gpu_busy_s']:.3f} s of {p['wall_s']:.3f} s wall")
    if "cards" in results:
        c = results["cards"]
        lines.append(f"default command, one epoch of {c['rows']} rows (median {c['median_tokens']:.0f}, max "
                     f"{c['max_tokens']} tokens), on simulated cards:")
        lines.append(f"{'card':>12} {'usable':>7} {'micro x acc':>11} {'peak GiB':>8} {'real tok/s':>10} {'OOM redone':>10}  "
                     "checkpointed layers per micro-batch")
        for key, r in c.items():
            if not key.endswith("GB") and key != "default_run":
                continue
            name = key if key != "default_run" else "whole GPU"
            if r["exit"]:
                lines.append(f"{name:>12} {r.get('usable_gib', ''):>7} FAILED: {r['error']}")
                continue
            lines.append(f"{name:>12} {r.get('usable_gib', '-'):>7} {str(r['micro_batch']) + ' x ' + str(r['grad_accum']):>11} "
                         f"{r['peak_gib'] or 0:>8.2f} {r['real_tok_s']:>10.0f} {len(r['recoveries']):>10}  {r['plan']}")
        d = c["default_run"]
        lines.append(f"default 3-epoch run on financial_data.txt, whole process: {d['process_wall_s']:.1f} s "
                     f"(training {d.get('train_s', 0):.1f} s; {d.get('compile', '')})")
    if "ablate" in results:
        for name, r in results["ablate"]["train"].items():
            lines.append(f"ablate train {name:28} {r['real_tok_s']:>6.0f} real tok/s, step {r['step_s']:.3f} s, "
                         f"peak {r['peak_gib']:.1f} GiB, losses {[round(x, 4) for x in r['losses']]}")
        if "compile_warmup_s" in results["ablate"]:
            lines.append(f"ablate compile warm-up {results['ablate']['compile_warmup_s']:.0f} s wall "
                         f"({results['ablate']['compile_s']:.0f} s compiling)")
        d = results["ablate"]["decode"]
        for label in ("base", "tuned_fp32_adapter", "tuned_bf16_adapter"):
            lines.append(f"ablate decode {label:20} {d[label]['tok_per_s']:>6.0f} new tok/s ({d[label]['wall_s']:.1f} s, "
                         f"{d['prompts']} prompts x {d['new_tokens_each']} tokens)")
        lines.append(f"ablate decode: {d['same_answers_fp32_vs_bf16']} of {d['prompts']} greedy answers identical "
                     "with fp32 and bf16 adapter weights")
    if "compare" in results:
        lines.append(f"{'comparison (whole process)':26} {'prompts':>7} {'process s':>9} {'warm-up s':>9} "
                     f"{'base tok/s':>10} {'tuned tok/s':>11} {'tuned/base':>10}  path")
        for label, r in results["compare"].items():
            lines.append(f"{label:26} {str(r['prompts']) + 'x' + str(r['max_new_tokens']):>7} {r['process_wall_s']:>9.1f} "
                         f"{r['warm_up_s']:>9.1f} {r['base_tok_per_s']:>10.0f} {r['tuned_tok_per_s']:>11.0f} "
                         f"{r['tuned_tok_per_s'] / r['base_tok_per_s']:>10.2f}  {r['weights'].split(';')[0]}; "
                         f"{r['decoding'].split(' (')[0]}")
    if "knowledge" in results:
        for label, r in results["knowledge"].items():
            lines.append(f"knowledge check ({label}: {r['weights'].split(';')[0]}): {r['questions']} questions per side "
                         f"in {r['base_s']:.1f} s (base) + {r['tuned_s']:.1f} s (tuned) = {r['questions_per_s']:.0f} "
                         f"questions/s; generation of both sides {r['generation_s']:.1f} s; whole comparison "
                         f"{r['process_wall_s']:.1f} s")
            for g in r["groups"]:
                d = g["difference"]
                lines.append(f"  {g['name']:8} n={g['n']:5} chance {g['chance']:.1f}%: {g['base']:.1f}% -> "
                             f"{g['tuned']:.1f}%, {d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] points, "
                             f"right->wrong {g['broke']}, wrong->right {g['fixed']}")
    if "gpus" in results:
        g = results["gpus"]
        lines.append(f"default command on financial_data.txt ({g['gpus_available']} GPUs here): {'launcher':12} "
                     f"{'micro x acc x procs':>19} {'process s':>9} {'train s':>7} {'real tok/s':>10} {'scaling':>7} "
                     f"{'eval loss':>9}")
        for label, r in g["train"].items():
            if r["exit"]:
                lines.append(f"{'':>44}{label:12} FAILED: {r['error']}")
                continue
            batch = f"{r['micro_batch']} x {r['grad_accum']} x {r['processes']}"
            scaling = f"{100 * r['scaling_efficiency']:.0f}%" if "scaling_efficiency" in r else "-"
            lines.append(f"{'':>44}{label:12} {batch:>19} {r['process_wall_s']:>9.1f} {r['train_s']:>7.1f} "
                         f"{r['real_tok_s']:>10.0f} {scaling:>7} {r['eval_loss'] or 0:>9.4f}")
        for label, r in g["compare"].items():
            if "answers" in r:
                lines.append(f"comparison {label:12}: {r['process_wall_s']:.1f} s for {r['prompts']} prompts, tuned "
                             f"{r['tuned_tok_per_s']:.0f} tok/s; greedy answers as with python: "
                             f"{r.get('same_answers_as_python', '-')} of {len(r['answers'])}")
    if "small_cards" in results:
        sc = results["small_cards"]
        lines.append(f"default comparison with --max-new-tokens {sc['max_new_tokens']}, and the chat (256):")
        lines.append(f"{'small cards (NF4)':18} {'usable':>6} {'compare s':>9} {'peak GiB':>8} {'changed':>7} "
                     f"{'chat 1st s':>10} {'peak GiB':>8}  weights")
        for card, r in sc.items():
            if not card.endswith("GB"):
                continue
            c, chat = r["compare"], r["chat"]
            if c["exit"]:
                lines.append(f"{card:18} {r['usable_gib']:>6.2f} refused: {c['last_line']}")
                continue
            changed = c.get("changed_vs_reference_b1")
            lines.append(f"{card:18} {r['usable_gib']:>6.2f} {c['process_wall_s']:>9.1f} {c['process_peak_gib'] or 0:>8.2f} "
                         f"{100 * changed:>6.0f}% {chat['first_answer_s'] or 0:>10.1f} {chat['process_peak_gib'] or 0:>8.2f}"
                         f"  {c['weights']}")
        lines.append(f"answers changed by batching alone (NF4, whole GPU, batch 1 vs default): "
                     f"{100 * sc['batching_changed']:.0f}%; the reference for 'changed' is batch 1")
    if "export" in results:
        for fmt, r in results["export"].items():
            sec = r["seconds"]
            lines.append(f"export {fmt:8} on {r['device']}: {sec['total']:.1f} s (load {sec['load']:.1f}, merge "
                         f"{sec['merge']:.1f}, write {sec['write']:.1f}), peak GPU {r['peak_gpu_gib'] or 0:.1f} GiB, "
                         f"{r['disk_gib']:.2f} GiB on disk in {r['files']} files")
    return lines


def record(results: dict, path: Path) -> None:
    """Append this run to bench/RESULTS.md: the history of every measured run."""
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    block = [f"## {results['date']} — {results['device']}", "", f"Versions: {versions}.", "", "```",
             *table(results), "```", ""]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(block) + "\n")


def main(args):
    if args.record:
        results = json.loads(Path(args.results).read_text())
        record(results, REPO / "bench" / "RESULTS.md")
        print("\n".join(table(results)))
        return
    if args.smoke:  # the whole pipeline on the tiny model, on CPU: checks the script, measures nothing
        ckpt = resolve_model_dir("tiny")
    elif not CUDA:
        sys.exit("error: this benchmark needs a CUDA GPU (or --smoke for a CPU check of the script)")
    else:
        ckpt = build_checkpoint(args.shared, args.workdir / "chatglm3-6b-random")
    out = Path(args.results)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results |= {"device": torch.cuda.get_device_name(0) if CUDA else "CPU (smoke)", "date": time.strftime("%Y-%m-%d"),
                "versions": library_versions()}
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after each part, so a run cut short still keeps what it measured
        out.write_text(json.dumps(results, indent=2))
        print("\n".join(table(results)), flush=True)

    if args.part in ("train", "all"):
        results["train"] = part_train(args, ckpt, args.shared)
        # the default flags on a run long enough for auto to compile (a short one trains eagerly: "ours")
        results["train_real_tok_s"] = results["train"]["ours_compiled"]["real_tok_s"]
        results["train_eager_real_tok_s"] = results["train"]["ours"]["real_tok_s"]
        results["compile_warmup_s"] = results["train"]["compile_warmup_s"]
        results["seed_recipe_real_tok_s"] = results["train"]["seed"]["real_tok_s"]
        results["lowmem_peak_gib"] = results["train"]["lowmem"]["peak_gib"]
        save()
    if args.part in ("cards", "all"):
        results["cards"] = part_cards(args, ckpt, args.shared)
        results["simulated_cards"] = {k: {f: v.get(f) for f in ("usable_gib", "exit", "micro_batch", "grad_accum",
                                                                "checkpointing", "peak_gib", "real_tok_s", "error")}
                                      for k, v in results["cards"].items() if k.endswith("GB")}
        results["default_run_wall_s"] = results["cards"]["default_run"]["process_wall_s"]
        save()
    if args.part == "ablate":
        results["ablate"] = part_ablate(args, ckpt, args.shared)
        save()
    if args.part in ("compare", "export", "all"):
        results["compare"] = part_compare(args, ckpt, args.shared)
        c = results["compare"]
        results["compare_default_wall_s"] = c["default"]["process_wall_s"]
        results["compare_wall_s"] = c["batched"]["process_wall_s"]
        results["tuned_base_decode_ratio"] = c["default"]["tuned_tok_per_s"] / c["default"]["base_tok_per_s"]
        results["tuned_b1_tok_s"] = c["one_at_a_time"]["tuned_tok_per_s"]
        save()
    if args.part == "gpus":
        results["gpus"] = part_gpus(args, ckpt, args.shared)
        rows = results["gpus"]["train"]
        results["ddp_real_tok_s_by_gpus"] = {str(r["processes"]): r["real_tok_s"] for label, r in rows.items()
                                             if label != "python" and "real_tok_s" in r}
        results["ddp_scaling_efficiency"] = {str(r["processes"]): r["scaling_efficiency"] for r in rows.values()
                                             if "scaling_efficiency" in r}
        save()
    if args.part in ("knowledge", "all"):
        results["knowledge"] = part_knowledge(args, ckpt, args.shared)
        results["knowledge_check_s"] = results["knowledge"]["default"]["check_s"]
        results["knowledge_questions_per_s"] = results["knowledge"]["default"]["questions_per_s"]
        save()
    if args.part in ("small-cards", "all"):
        results["small_cards"] = part_small_cards(args, ckpt, args.shared)
        sc = results["small_cards"]
        results["compare_4gb_wall_s"] = sc["4GB"]["compare"]["process_wall_s"]
        results["chat_4gb_first_answer_s"] = sc["4GB"]["chat"]["first_answer_s"]
        results["small_card_peaks_gib"] = {card: {what: sc[card][what].get("process_peak_gib")
                                                  for what in ("compare", "chat")} for card in sc if card.endswith("GB")}
        results["answers_changed_4gb"] = sc["4GB"]["compare"].get("changed_vs_reference_b1")
        save()
    if args.part in ("export", "all"):  # exports the comparison's run
        results["export"] = part_export(args, ckpt, args.shared)
        save()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--part", choices=("train", "cards", "compare", "export", "all", "ablate", "gpus", "knowledge",
                                      "small-cards"),
                   default="all",
                   help="what to measure; ablate: each speed setting on and off, side by side; gpus: the default "
                        "command on 1, 2, ... GPUs (torchrun)")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                   help="folder with chatglm3/, realdata/ and benchmarks/cmmlu/")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/glmtune-bench"), help="checkpoint and scratch space")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per training mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--small-card-tokens", type=int, default=64,
                   help="--max-new-tokens of the small-cards part's comparisons")
    p.add_argument("--prompts", type=int, default=200, help="prompts for the comparison")
    p.add_argument("--new-tokens", type=int, default=256, help="new tokens per answer in the comparison")
    p.add_argument("--record", action="store_true",
                   help="no measuring: append the run in --results to bench/RESULTS.md (after fetching it)")
    p.add_argument("--smoke", action="store_true", help="run on the tiny model on CPU to check the script")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "latest.json"), help="JSON output")
    main(p.parse_args())
