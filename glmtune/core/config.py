"""The settings of the two jobs, declared once: each field is a flag (with its type, default, help
and the spellings users bring from HF Trainer, TRL and LLaMA-Factory), a key of a `--config` YAML
file, and an entry of `run_config.json`. Nothing here imports torch, so a bad setting is reported
in the first second, before any model loads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed
from .errors import ConfigError

DEFAULT_MODEL = "THUDM/chatglm3-6b"
MAX_POSITIONS = 8192  # ChatGLM3-6B's seq_length: no answer can be longer
NATIVE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
# The seed (and ChatGLM3 docs) name modules by their original names; the native model splits qkv.
CHATGLM_ALIASES = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}


def resolve_lora_targets(spec: str) -> list[str]:
    """Comma-separated module names (native or ChatGLM3's) -> native `GlmForCausalLM` names."""
    targets: list[str] = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        for target in CHATGLM_ALIASES.get(name, (name,)):
            if target not in NATIVE_TARGETS:
                known = ", ".join([*NATIVE_TARGETS, *CHATGLM_ALIASES])
                raise ConfigError("lora_target", f"unknown module {name!r}; use some of: {known}")
            if target not in targets:
                targets.append(target)
    if not targets:
        raise ConfigError("lora_target", "is empty; e.g. q_proj,k_proj,v_proj,o_proj")
    return targets


PROMPT_FORMATS = ("glm3", "chat")  # the layouts (prompts.py); "auto" resolves to one of them per run
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
# Trainer integrations and the module each needs.
REPORTERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow",
             "swanlab": "swanlab", "trackio": "trackio"}


def opt(default=None, help: str = "", *, group: str = "", aliases: tuple[str, ...] = (), choices=None,
        nargs=None, const=None, consts: dict | None = None, metavar=None, identity: bool = True,
        normalize=None, factory=None):
    """A setting. aliases: other spellings (underscored, without dashes); consts: extra flags that
    set a fixed value (HF's --bf16); identity: whether changing it makes a different training run;
    normalize: maps the other spellings of a value (from a flag or a YAML file) to ours."""
    meta = dict(help=help, group=group, aliases=aliases, choices=choices, nargs=nargs, const=const,
                consts=consts or {}, metavar=metavar, identity=identity, normalize=normalize)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def on_off(value):
    """HF's boolean --gradient_checkpointing (true/false, from a flag or YAML) as our on/off."""
    words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
    if isinstance(value, bool):
        return "on" if value else "off"
    return words.get(value.lower(), value) if isinstance(value, str) else value


def resume_spelling(value):
    """HF's resume_from_checkpoint: true (the last checkpoint) or false (none), besides a path."""
    if isinstance(value, bool):
        return "last" if value else None
    return value


def base_type(cls, f: dataclasses.Field):
    """The field's type without `| None`, and whether None is allowed."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None)), True
    return hint, False


def from_text(kind, text: str, optional: bool):
    """A flag's text (or a YAML scalar) as the field's type."""
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is Path:
        return Path(text).expanduser()
    return text


def convert(cls, f: dataclasses.Field, value):
    """A value from a YAML file or run_config.json, typed as the field is; ValueError if it cannot be."""
    kind, optional = base_type(cls, f)
    if f.metadata["normalize"]:
        value = f.metadata["normalize"](value)
    if value is None:
        if optional:
            return None
        raise ValueError("may not be empty")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return [from_text(item, str(v), False) for v in (value if isinstance(value, list) else [value])]
    if isinstance(value, (bool, list, dict)):
        raise ValueError(f"must be a {kind.__name__}, not {value!r}")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be a whole number, not {value!r}")
        return int(value)
    return from_text(kind, str(value), optional)


class Settings:
    """Shared behaviour of the job configs: a dict round trip for run_config.json."""

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict):
        """Rebuild from run_config.json; keys of older or newer versions that are unknown are dropped."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**{k: convert(cls, fields[k], v) for k, v in values.items() if k in fields})

    def check_numbers(self) -> None:
        """What no single range check says: every float finite (an inf learning rate trains to a NaN
        adapter), and a seed that torch and numpy accept."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number, not {value}")
        seed = getattr(self, "seed", 0)
        if not 0 <= seed < 2**32:
            raise ConfigError("seed", f"must be in [0, 2**32), not {seed}")

    @classmethod
    def identity_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("identity", True)]


@dataclass
class TrainConfig(Settings):
    # model and data
    model: str = opt(DEFAULT_MODEL, "ChatGLM3 hub id (e.g. THUDM/chatglm3-6b; ZhipuAI/chatglm3-6b is looked up in "
                     "the ModelScope cache first), a local checkpoint folder, or 'tiny' (CPU demo model)",
                     group="model and data", aliases=("model_name_or_path",))
    data: Path = opt(Path("financial_data.txt"),
                     "training data: .txt Q&A lines '问题？ 描述,回答'; .csv (department,title,ask,answer); "
                     ".jsonl/.json with question/answer, instruction/input/output, or conversations "
                     "(ChatGLM3 'conversations' role/content, ShareGPT from/value, 'messages')",
                     group="model and data", aliases=("train_file", "data_path"))
    output_dir: Path = opt(Path("chatglm3-medical-lora"),
                           "where the adapter, tokenizer, run_config.json, the eval split, metrics and loss.png go",
                           group="model and data", identity=False)
    eval_ratio: float = opt(0.05, "fraction of examples held out for evaluation (saved next to the adapter)",
                            group="model and data", aliases=("val_size",))
    seed: int = opt(42, "seed for the eval split, LoRA init and data order", group="model and data")
    overwrite: bool = opt(False, "replace an output folder that holds another run (or this one, to train again)",
                          group="model and data", aliases=("overwrite_output_dir",), identity=False)
    resume: str | None = opt(None, "continue the interrupted run in --output-dir from its last complete "
                             "checkpoint, or from the checkpoint folder given", group="model and data",
                             aliases=("resume_from_checkpoint",), nargs="?", const="last", metavar="PATH",
                             identity=False, normalize=resume_spelling)

    # prompt
    prompt_format: str = opt("auto", "glm3: '[Round 1]\\n\\n问：{q}\\n\\n答：'; chat: ChatGLM3's <|user|>/<|assistant|> "
                             "turns; auto: chat for conversation data, else glm3", group="prompt",
                             choices=("auto", *PROMPT_FORMATS), aliases=("template",))
    max_length: int = opt(1024, "tokens per example; the question is cut to half of it at most, then the answer's "
                          "end (conversations drop their oldest turns first)", group="prompt",
                          aliases=("max_seq_length", "cutoff_len"))
    train_on_prompt: bool = opt(False, "also compute the loss on prompt tokens", group="prompt")

    # LoRA
    lora_r: int = opt(16, "LoRA rank", group="LoRA", aliases=("lora_rank",))
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r)", group="LoRA")
    lora_dropout: float = opt(0.1, "dropout on the LoRA input", group="LoRA")
    lora_target: str = opt("query_key_value,dense,dense_h_to_4h,dense_4h_to_h",
                           "modules, comma-separated: ChatGLM3 names (query_key_value,dense,dense_h_to_4h,"
                           "dense_4h_to_h) or native ones (q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj)",
                           group="LoRA", aliases=("lora_target_modules", "target_modules"))

    # optimisation
    epochs: float = opt(3.0, "passes over the training split", group="optimisation", aliases=("num_train_epochs",))
    max_steps: int = opt(-1, "optimizer steps; overrides --epochs when > 0", group="optimisation")
    learning_rate: float = opt(1e-4, "peak learning rate", group="optimisation", aliases=("lr",))
    lr_scheduler: str = opt("linear", "learning-rate schedule after warm-up", group="optimisation",
                            choices=SCHEDULERS, aliases=("lr_scheduler_type",))
    warmup_ratio: float = opt(0.03, "fraction of steps spent warming up", group="optimisation")
    weight_decay: float = opt(0.0, "AdamW weight decay on the LoRA weights", group="optimisation")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0 = no clipping)", group="optimisation")
    batch_size: str = opt("auto", "micro-batch per step and process, or 'auto' to fit it to free GPU memory; the "
                          "effective batch is batch-size x grad-accum x processes; with auto it stays grad-accum, "
                          "however many processes share it", group="optimisation",
                          aliases=("per_device_train_batch_size",))
    grad_accum: int = opt(16, "micro-batches per optimizer step (with --batch-size auto: the effective batch)",
                          group="optimisation", aliases=("gradient_accumulation_steps",))
    gradient_checkpointing: str = opt("auto", "recompute activations in backward to save memory. auto: on a GPU, "
                                      "each micro-batch checkpoints the fewest layers that fit (none when it fits "
                                      "without); off on CPU. on: every layer, every step (the seed's setting)",
                                      group="optimisation", choices=("auto", "on", "off"), nargs="?", const="on",
                                      normalize=on_off)

    # logging and checkpoints
    logging_steps: int = opt(5, "log the training loss every N optimizer steps", group="logging and checkpoints",
                             identity=False)
    eval_steps: int | None = opt(None, "evaluate every N optimizer steps (default: at the end of each epoch)",
                                 group="logging and checkpoints", identity=False)
    save_steps: int = opt(50, "checkpoint every N optimizer steps (for --resume)", group="logging and checkpoints",
                          identity=False)
    save_total_limit: int | None = opt(2, "keep only the newest N checkpoints (0 or none: keep all)",
                                       group="logging and checkpoints", identity=False)
    report_to: str = opt("none", "where to log metrics, comma-separated: none, tensorboard (in OUTPUT_DIR/runs), "
                         "wandb, mlflow, swanlab, trackio", group="logging and checkpoints", identity=False)

    # hardware
    quantization: str = opt("nf4", "nf4: 4-bit NF4 base weights (QLoRA); none: full-precision base",
                            group="hardware", choices=("nf4", "none"))
    precision: str = opt("auto", "compute precision; auto: bf16 where the GPU has it, else fp16; fp32 on CPU",
                         group="hardware", choices=("auto", "bf16", "fp16", "fp32"),
                         consts={"bf16": "bf16", "fp16": "fp16"})
    compile: str = opt("auto", "compile the decoder layers with torch.compile (faster steps after a one-off compile "
                       "of ~45 s, cached by torch for later runs): auto = on a GPU when the run is long enough to "
                       "gain more than the compile costs", group="hardware", choices=("auto", "on", "off"),
                       identity=False)
    gpu_memory: float | None = opt(None, "GiB of GPU memory PyTorch may use (default: all that is free): share a "
                                   "card, or check that a recipe fits a smaller one (a card's size minus ~0.5 GiB "
                                   "for the CUDA context)", group="hardware", metavar="GIB", identity=False)

    def validate(self) -> None:
        """Raise ConfigError for the first setting that cannot work. Touches no GPU and no model."""
        self.check_values()
        check_file(self.data, "data")
        check_model(self.model, "model")
        processes = distributed.world_size()
        if self.batch_size == "auto" and self.grad_accum % processes:
            fits = sorted({max(processes, self.grad_accum // processes * processes),
                           -(-self.grad_accum // processes) * processes})
            raise ConfigError("grad_accum", f"{self.grad_accum} (the effective batch, with --batch-size auto) does not "
                                            f"split evenly over {processes} processes; use "
                                            f"{' or '.join(map(str, fits))}")
        if self.resume not in (None, "last") and not Path(self.resume).is_dir():
            raise ConfigError("resume", f"{self.resume}: no such checkpoint folder; pass a checkpoint-N folder of "
                                        "this run, or --resume alone for its last checkpoint")
        for name in self.reporters():
            module = REPORTERS.get(name, "")
            if module == "":
                raise ConfigError("report_to", f"unknown integration {name!r}; use some of: {', '.join(REPORTERS)}")
            if module and importlib.util.find_spec(module) is None:
                raise ConfigError("report_to", f"{name} is not installed; pip install {name}, or --report-to none")

    def check_values(self) -> None:
        """The checks that need no file: also what a run_config.json read back must pass."""
        checks = [
            ("lora_r", self.lora_r >= 1, "must be at least 1"),
            ("lora_alpha", self.lora_alpha >= 1, "must be at least 1"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be 0 or more"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be 0 (no clipping) or more"),
            ("eval_ratio", 0 <= self.eval_ratio < 1, "must be in [0, 1)"),
            ("epochs", self.epochs > 0 or self.max_steps > 0, "must be positive (or give --max-steps)"),
            ("grad_accum", self.grad_accum >= 1, "must be at least 1"),
            ("max_length", self.max_length >= 64, "must be at least 64 tokens"),
            ("save_steps", self.save_steps >= 1, "must be at least 1"),
            ("logging_steps", self.logging_steps >= 1, "must be at least 1"),
            ("eval_steps", self.eval_steps is None or self.eval_steps >= 1, "must be at least 1"),
            ("save_total_limit", self.save_total_limit is None or self.save_total_limit >= 0, "must be 0 or more"),
            ("batch_size", self.batch_size == "auto" or (self.batch_size.isdigit() and int(self.batch_size) >= 1),
             f"must be 'auto' or a positive integer, not {self.batch_size!r}"),
            ("resume", not (self.resume and self.overwrite), "and --overwrite contradict each other; pick one"),
            ("gpu_memory", self.gpu_memory is None or self.gpu_memory >= 1, "must be at least 1 (GiB)"),
        ]
        self.check_numbers()
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(name, message)
        check_choices(self)
        resolve_lora_targets(self.lora_target)

    def reporters(self) -> list[str]:
        names = [part.strip() for part in self.report_to.split(",") if part.strip()]
        return [n for n in names if n != "none"]


@dataclass
class CompareConfig(Settings):
    # what to compare
    adapter: Path = opt(Path("chatglm3-medical-lora"),
                        "output folder of chatglm_finetuning.py (adapter + run_config.json + eval split)",
                        group="what to compare", aliases=("adapter_name_or_path",))
    base_model: str | None = opt(None, "base model folder or hub id; default: the one recorded in run_config.json",
                                 group="what to compare", aliases=("model", "model_name_or_path"))
    quantization: str = opt("auto", "how to hold the weights: none = 16-bit with the adapter merged after the base "
                            "side (fast); nf4 = 4-bit with the adapter unmerged (a third of the memory); auto = "
                            "16-bit where GPU memory allows, else nf4; as-trained = what the run trained on",
                            group="what to compare", choices=("auto", "as-trained", "nf4", "none"))
    # prompts
    data: Path | None = opt(None, "prompts with reference answers, any format the training script reads; "
                            "default: the eval split held out at training time", group="prompts")
    num_samples: int = opt(50, "use the first N prompts of --data (0 = all)", group="prompts",
                           aliases=("max_samples",))
    prompt: list[str] = opt(help="an ad-hoc question without reference (repeatable); replaces --data",
                            group="prompts", metavar="QUESTION", factory=list)
    # decoding
    max_new_tokens: int = opt(256, "new tokens per answer at most", group="decoding")
    batch_size: int = opt(256, "prompts per generate() call at most, fewer where GPU memory is short (1 = one at a "
                          "time); decoding is launch-bound, so a large batch costs little more per step than one "
                          "prompt", group="decoding", aliases=("per_device_eval_batch_size",))
    compile: str = opt("auto", "compile the decoding step with CUDA graphs (16-bit weights, CUDA only): auto = when the "
                       "work saves more time than the compile costs (its time is reported apart)", group="decoding",
                       choices=("auto", "on", "off"))
    do_sample: bool = opt(False, "sample instead of greedy decoding", group="decoding")
    temperature: float = opt(0.8, "sampling temperature (with --do-sample)", group="decoding")
    top_p: float = opt(0.8, "nucleus sampling mass (with --do-sample)", group="decoding")
    seed: int = opt(42, "sampling seed, the same for both models", group="decoding")
    # metrics and outputs
    terms_file: Path | None = opt(None, "medical-term lexicon, one term per line, '#' lines are comments/categories "
                                  "(default: the one shipped with glmtune)", group="metrics and outputs")
    no_perplexity: bool = opt(False, "skip perplexity of the reference answers", group="metrics and outputs")
    output: Path | None = opt(None, "folder for the log, JSON report, chart and HTML report (default: ADAPTER/"
                              "comparison); when it already holds a report, the next free NAME-2, NAME-3, ... is used",
                              group="metrics and outputs")
    overwrite: bool = opt(False, "replace the report in --output (or ADAPTER/comparison) instead of numbering a new "
                          "folder", group="metrics and outputs")
    examples: int = opt(5, "side-by-side examples written to the log (the HTML report holds them all)",
                        group="metrics and outputs")
    # knowledge check
    benchmark: list[str] = opt(help="multiple-choice exam questions both sides answer (repeatable): a folder in "
                               "CMMLU's or C-Eval's layout, a CMB .json or a .jsonl file, a hub name (cmmlu, ceval, "
                               "cmb: downloaded once into the cache), or none; medical and general subjects are "
                               "reported apart: did it learn medicine, did it forget the rest?",
                               group="knowledge check", metavar="PATH", factory=list)
    benchmark_shots: int = opt(0, "worked examples from the benchmark's dev split before each question (K-shot)",
                               group="knowledge check")
    benchmark_questions: int = opt(0, "the first N questions of each subject (0 = all)", group="knowledge check")
    # blind review
    ratings: list[Path] = opt(help="fold reviewers' ratings (the JSON files the HTML report's blind review downloads) "
                              "into that comparison's verdict: preference for the fine-tuned side with its interval, "
                              "per department, agreement between reviewers; loads no model. The report is found by "
                              "its id under ADAPTER/comparison* (or give --output)", group="blind review",
                              metavar="FILE", nargs="+", factory=list)
    # hardware
    device: str = opt("auto", "where the models run: auto = the GPU when there is one; cpu = in RAM (16-bit weights "
                      "where RAM allows; slower), e.g. for a GPU too small even for NF4 with the embedding moved off "
                      "it", group="hardware", choices=("auto", "cuda", "cpu"))
    gpu_memory: float | None = opt(None, "GiB of GPU memory PyTorch may use (default: all that is free): share a "
                                   "card, or check that the comparison or the chat fits a smaller one (a card's size "
                                   "minus ~0.6 GiB for the CUDA context)", group="hardware", metavar="GIB")
    # chat
    chat: bool = opt(False, "talk with the fine-tuned model (streamed, multi-turn, ChatGLM3's chat layout) instead of "
                     "comparing; /base, /tuned, /both, /reset, /exit; reads one turn per line from a pipe too",
                     group="chat")

    def validate(self) -> None:
        checks = [
            ("max_new_tokens", 1 <= self.max_new_tokens <= MAX_POSITIONS,
             f"must be in [1, {MAX_POSITIONS}] (ChatGLM3's context length)"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("num_samples", self.num_samples >= 0, "must be 0 (all) or more"),
            ("temperature", self.temperature >= 0.01, "must be at least 0.01 (lower overflows; for the most likely "
                                                      "answer drop --do-sample)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("examples", self.examples >= 0, "must be 0 or more"),
            ("benchmark_shots", self.benchmark_shots >= 0, "must be 0 (zero-shot) or more"),
            ("benchmark_questions", self.benchmark_questions >= 0, "must be 0 (all) or more"),
            ("gpu_memory", self.gpu_memory is None or self.gpu_memory >= 1, "must be at least 1 (GiB)"),
        ]
        self.check_numbers()
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(name, message)
        check_choices(self)
        check_run_and_base(self.adapter, self.base_model)
        if self.data is not None:
            check_file(self.data, "data")
        if self.terms_file is not None:
            check_file(self.terms_file, "terms_file")
        check_benchmarks(self.benchmark)
        for path in self.ratings:
            check_file(path, "ratings")
        if self.ratings and (self.chat or self.prompt or self.data is not None or self.benchmark):
            raise ConfigError("ratings", "folds reviewers' ratings into an earlier report and loads no model; drop "
                                         "--chat, --prompt, --data and --benchmark")
        if self.chat and distributed.world_size() > 1:
            raise ConfigError("chat", "is one conversation in one process; start it with python, not torchrun or "
                                      "accelerate launch")
        if self.chat and (self.prompt or self.data is not None):
            raise ConfigError("chat", "is a conversation: type the questions in it, without --prompt or --data")
        for question in self.prompt:
            if not question.strip():
                raise ConfigError("prompt", "is empty; give a question, e.g. --prompt \"孩子发烧怎么办？\"")
            try:
                question.encode("utf-8")
            except UnicodeEncodeError:  # bytes that were not UTF-8 reach argv as lone surrogates
                raise ConfigError("prompt", f"{question!r} is not valid UTF-8 text; set the terminal to UTF-8 "
                                            "(e.g. export LANG=C.UTF-8) or pass the questions with --data FILE") from None


BENCHMARK_SUITES = {"cmmlu": "CMMLU", "ceval": "C-Eval", "cmb": "CMB"}  # --benchmark NAME: downloaded


def check_benchmarks(values: list[str]) -> None:
    """Each --benchmark a hub name, an existing file or folder, or none (alone)."""
    if "none" in values and len(values) > 1:
        raise ConfigError("benchmark", "none skips the knowledge check; give it alone, or drop it")
    for value in values:
        if value != "none" and value.lower() not in BENCHMARK_SUITES and not Path(value).expanduser().exists():
            raise ConfigError("benchmark", f"{value}: no such file or folder; give a benchmark folder or file, or "
                                           f"one of {', '.join(BENCHMARK_SUITES)} (downloaded), or none")


def check_choices(config: Settings) -> None:
    """Choices again: values from a YAML file do not pass through argparse's own check."""
    for f in dataclasses.fields(config):
        choices, value = f.metadata.get("choices"), getattr(config, f.name)
        if choices and value not in choices:
            raise ConfigError(f.name, f"must be one of {', '.join(choices)}, not {value!r}")


def check_run_and_base(adapter: Path, base_model: str | None) -> None:
    """--adapter is a folder; --base-model, when given, a model that can be found."""
    if not adapter.is_dir():
        raise ConfigError("adapter", f"{adapter}: no such folder; pass the --output-dir of a training run")
    if base_model is not None:
        check_model(base_model, "base_model")


def check_model(name_or_path: str, field_name: str) -> None:
    """A local model must exist; 'tiny' and hub ids (ORG/NAME) are resolved when the model loads."""

    path = Path(name_or_path).expanduser()
    if name_or_path == "tiny" or path.is_dir() or (is_hub_id(name_or_path) and not path.exists()):
        return
    if path.exists():
        raise ConfigError(field_name, f"{path} is a file; give the checkpoint folder that holds config.json")
    raise ConfigError(field_name, f"{path}: no such folder; give a ChatGLM3 checkpoint folder, a hub id such as "
                                  "THUDM/chatglm3-6b, or tiny")


def check_file(path: Path, name: str) -> None:
    if path.is_dir():
        raise ConfigError(name, f"{path} is a folder; give the file itself")
    if not path.exists():
        raise ConfigError(name, f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(name, f"{path} is not a regular file (a pipe or a device?); give a data file")


EXPORT_FORMATS = ("native", "chatglm", "gguf")
GGUF_TYPES = ("bf16", "q8_0", "q4_0")


@dataclass
class ExportConfig(Settings):
    adapter: Path = opt(Path("chatglm3-medical-lora"), "output folder of a finished chatglm_finetuning.py run (adapter "
                        "+ run_config.json + tokenizer)", group="what to export", aliases=("adapter_name_or_path",))
    output: Path | None = opt(None, "folder to write the merged model into (default: ADAPTER-merged for native, "
                              "ADAPTER-chatglm for chatglm, ADAPTER-gguf for gguf)", group="what to export",
                              aliases=("output_dir", "export_dir"))
    format: str = opt("native", "native: transformers' GlmForCausalLM (AutoModelForCausalLM, vLLM; no remote code); "
                      "chatglm: ChatGLM3's original layout (official demos, chatglm.cpp); gguf: one GGUF file and an Ollama "
                      "Modelfile (llama.cpp, Ollama)", group="what to export", choices=EXPORT_FORMATS)
    base_model: str | None = opt(None, "base model folder or hub id; default: the one recorded in run_config.json",
                                 group="what to export", aliases=("model", "model_name_or_path"))
    dtype: str = opt("bf16", "weights' precision: bf16, fp16 (ChatGLM3's own release format; GPUs without bf16), or "
                     "fp32 (twice the size; for exact comparisons); with --format gguf, the precision of the merge, "
                     "before --gguf-type", group="how", choices=("bf16", "fp16", "fp32"))
    gguf_type: str = opt("bf16", "--format gguf: the weights' type in the GGUF file: bf16 (the merged model as it is), "
                         "q8_0 (half the size, near-lossless) or q4_0 (about a quarter, for small machines); norms and "
                         "biases stay F32", group="how", choices=GGUF_TYPES)
    device: str = opt("auto", "where to merge: auto picks the GPU when the 16-bit model fits in its free memory, else "
                      "the CPU (which needs about the model's size in RAM)", group="how",
                      choices=("auto", "cuda", "cpu"))
    overwrite: bool = opt(False, "replace an earlier export in --output: the files its glmtune_export.json lists, "
                          "never others", group="how")
    chat_template: str = opt("chat", "the chat template of a native or gguf export (what vLLM, "
                             "apply_chat_template, llama.cpp and Ollama build prompts with): chat = ChatGLM3's <|user|>/<|assistant|> "
                             "turns; trained = the layout the adapter was trained on (for a glm3 run '[Round 1]\\n\\n"
                             "问：{q}\\n\\n答：', one question per conversation)", group="how",
                             choices=("chat", "trained"))

    def validate(self) -> None:
        """Raise ConfigError for the first setting that cannot work, before torch is imported."""
        check_choices(self)
        if distributed.world_size() > 1:
            raise ConfigError("config", "an export is one merge in one process; run it with python, not torchrun or "
                                        "accelerate launch")
        if self.format == "chatglm" and self.chat_template != "chat":
            raise ConfigError("chat_template", f"{self.chat_template} is for --format native or gguf; the chatglm layout "
                                               "keeps the base's tokenizer files, whose code builds ChatGLM3's chat prompts")
        if self.format != "gguf" and self.gguf_type != "bf16":
            raise ConfigError("gguf_type", f"{self.gguf_type} is for --format gguf; add --format gguf, or drop "
                                           "--gguf-type")
        check_run_and_base(self.adapter, self.base_model)
        output = self.target()
        if output.exists() and not output.is_dir():
            raise ConfigError("output", f"{output} is a file; choose a folder")
        if output.resolve() == self.adapter.resolve():
            raise ConfigError("output", f"{output} is the training run's folder; choose another folder")

    def target(self) -> Path:
        """--output, or a folder beside the run named after it and the format."""
        if self.output is not None:
            return self.output
        run = self.adapter.resolve()
        return run.with_name(f"{run.name}-{'merged' if self.format == 'native' else self.format}")


def is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).is_absolute()
