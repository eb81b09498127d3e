"""Export a training run for deployment: its adapter merged into a 16-bit copy of the base model.

The result is a whole model that loads without glmtune, in one of three layouts. `glmtune export`
runs it (`python -m glmtune.export`, its original name, too); `glmtune export --help` shows examples.

native (default): transformers' GlmForCausalLM — config.json with model_type glm, native tensor names
in safetensors shards, tokenizer.json with ChatGLM3's chat template (or, with --chat-template trained,
the layout the adapter was trained on: a glm3 run's '[Round 1]' prompt), generation_config.json with its
stop tokens. `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load
it with no remote code, on transformers 5 and 4.x; `vllm serve DIR` serves it.
chatglm: ChatGLM3's original layout — model_type chatglm, `transformer.encoder.layers.N...` names with
q/k/v fused into query_key_value, tokenizer.model — for tools built on the official release (its demos
and chatglm.cpp, which load it through ChatGLM3's remote code), and for glmtune.load_model.
gguf: one GGUF file in llama.cpp's chatglm architecture (bf16, q8_0 or q4_0) with ChatGLM3's vocabulary,
stops and chat template, and an Ollama Modelfile beside it — for llama.cpp and Ollama (gguf.py).

The adapter is merged into the base loaded in 16 bits (bf16 by default; fp16; fp32 for exact
comparisons), never into 4-bit weights. The QLoRA run trained against NF4-rounded base weights; the
comparison script's default path (16-bit weights, adapter merged) measures this very model, and
`--quantization nf4` the training-time one. The merge runs on the GPU when the model fits in its free
memory, else on the CPU (about the model's size in RAM). From Python: `export(ExportConfig(...))`.

Every layout also holds glmtune_export.json: the adapter, base and run settings the model came from,
and the files the export wrote, which are all that --overwrite ever deletes. The folder is written
whole into a hidden scratch folder beside it (.DIR.partial) and published by one rename, as a
comparison report is (glmtune.core.folders), so a killed export never looks complete.

Chat template: ChatGLM3's control tokens enter the prompt as text written by the template, so the
exported tokenizer matches control tokens in text (split_special_tokens false; training's tokenizer
reads all text as text). `apply_chat_template` then gives exactly `glmtune.chat_ids`, except where a
message itself contains a control token's text ("<|user|>", "[gMASK]", the word "sop" or "eop" standing
alone): there it becomes the control token, as with most chat models on transformers and vLLM. "sop"
and "eop" inside words ("esophagus", "people") stay text. Where users' text must never be read as
control tokens, build the ids with glmtune.chat_ids instead (transformers' sanitize_control_tokens
does not help here: it treats "eop" inside "people" as a control token). The trained glm3 layout's
template gives exactly the prompt ids training used (`glmtune.prompts.prompt_ids`), with the same
exception.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import files
from ..core.config import ExportConfig
from ..core.errors import ConfigError, ModelLoadError, RunDirError, few
from ..core.folders import Claim, claim, delete, foreign, is_own_scratch, place, publish, remove, \
    replaceable, reserve
from ..model.lora import check_adapter_files
from ..training.runs import FINISHED, RunRecord, library_versions
from ..core.terminal import command

# What was exported from what, and which files the export wrote: --overwrite deletes those and nothing
# else (an export's file names are any model's, so names alone cannot tell ours from another model's).
MANIFEST = "glmtune_export.json"
SHARD_BYTES = 4 * 10**9  # ChatGLM3-6B in 16 bits: 4 shards
# ChatGLM3's remote code, copied along when the base folder has it (a full download of the official repo does).
REMOTE_CODE = ("configuration_chatglm.py", "modeling_chatglm.py", "quantization.py", "tokenization_chatglm.py")
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# The official checkpoint's loaders, for a chatglm export whose base config.json names none (the tiny model).
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}
OFFICIAL_TOKENIZER_CONFIG = {
    "remove_space": False, "do_lower_case": False, "tokenizer_class": "ChatGLMTokenizer",
    "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
}
# ChatGLM3's chat layout, exactly as glmtune.chat_ids builds it: `[gMASK]sop`, per message its role
# token, "\n" and the content, then `<|assistant|>` for a reply. chat_ids encodes "\n" and each content
# separately, each with SentencePiece's dummy prefix "▁"; in one rendered string the space before the
# content is that prefix (no piece spans a "▁" boundary, so the ids are the same), and an empty content
# has none.
CHAT_TEMPLATE = (
    "[gMASK]sop"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'observation'] %}"
    "{{ raise_exception('unknown chat role \\'' + message['role'] + '\\'; ChatGLM3 knows system, user, assistant, "
    "observation') }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] %} {{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# The glm3 layout (prompts.GLM3_TEMPLATE after `[gMASK]sop`), rendered as training encoded it: one
# string, whose SentencePiece dummy prefix after the control tokens is training's too. It holds one
# question and nothing else, as every training example did.
ONE_QUESTION = (
    "{% if messages | length != 1 or messages[0]['role'] != 'user' %}"
    "{{ raise_exception('this model was trained on the [Round 1] layout, which holds one user question: no system "
    "prompt, no earlier turns') }}"
    "{% endif %}"
    "[gMASK]sop"
)


def chat_template(layout: str) -> str:
    """The chat template that builds a prompt in `layout` (prompts.py) with the ids training used."""
    from ..model.prompts import GLM3_TEMPLATE

    if layout == "chat":
        return CHAT_TEMPLATE
    return ONE_QUESTION + GLM3_TEMPLATE.replace("{question}", "{{ messages[0]['content'] }}")


@dataclass(frozen=True)
class Plan:
    """What `Export.plan` decided: the run, its base, the target folder and how to fill it."""

    run: RunRecord
    base: str  # as the run (or --base-model) names it
    base_dir: Path
    glm_config: Any  # the base's shape, as transformers' GlmConfig
    base_config: dict | None  # --format chatglm: the base's own config.json, which the export starts from
    tokenizer: Any  # --format native: the run's tokenizer, which the export deploys
    vocabulary: Any  # --format gguf: the base's SentencePiece vocabulary with ChatGLM3's control tokens (gguf.py)
    dtype: Any  # the torch dtype the base is merged in
    parameters: int
    device: str  # where the merge runs: cuda or cpu
    output: Path
    scratch: Path  # beside the output: where the export is written before it is published
    replaced: tuple[Path, ...]  # the earlier export that --overwrite deletes
    delete_first: bool  # no room for both: the earlier export goes before the new one is written
    template: str  # native: the prompt layout its chat template builds (prompts.py)


@dataclass(frozen=True)
class Merged:
    """What `Export.merge` made: the merged model and, for the native layout, its tokenizer."""

    model: Any
    tokenizer: Any
    seconds: dict[str, float]  # load, merge


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and what it cost (for the summary and for benchmarks)."""

    adapter: Path
    output: Path
    format: str
    dtype: str
    device: str
    base: str
    parameters: int
    trained: str  # the prompt layout the adapter was trained on
    template: str  # native, gguf: the layout its chat template builds
    gguf_type: str | None = None  # gguf: the weights' type in the file
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # load, merge, write, total
    peak_gpu_gib: float | None = None


class Export:
    """One export, in stages that each return a frozen result for the next (`export` runs them).
    Used as a context manager: on leaving, the run folder is free again, and an export not
    published whole leaves nothing behind."""

    def __init__(self, config: ExportConfig):
        self.config = config
        self.began = time.perf_counter()
        self.run_claim: Claim | None = None  # the run folder, shared with other readers
        self.scratch_claim: Claim | None = None  # on the output's scratch folder, reserved by plan

    def __enter__(self) -> Export:
        return self

    def __exit__(self, failed, *exc) -> None:
        if self.scratch_claim is not None:  # a refused or failed export leaves no folder of its own behind
            if failed:
                remove(self.scratch_claim.folder)
                self.scratch_claim.abandon()
            else:
                self.scratch_claim.release()
        if self.run_claim is not None:
            self.run_claim.release()

    def plan(self) -> Plan:
        """The run, its base, the target folder and the disk: everything that can refuse the export is
        checked before the base loads (minutes for the 6B model) and before anything is deleted."""
        import torch
        from transformers import GlmForCausalLM

        from ..model.loading import read_config
        from ..model.sources import resolve_model_dir
        from ..model.tokenizer import load_tokenizer
        from .gguf import gguf_size, read_vocabulary

        c = self.config
        c.validate()  # a config built in Python has not been through the command line's checks
        self.run_claim = claim(c.adapter, "exporting", shared=True)  # no training starts over it meanwhile
        check_adapter_files(c.adapter)
        run = RunRecord.load(c.adapter)
        if run.state != FINISHED:
            raise RunDirError(f"the run in {c.adapter} has not finished (its record says {run.state}); finish "
                              "it with --resume, then export it")
        tokenizer = load_tokenizer(c.adapter) if c.format == "native" else None  # a damaged one is named now
        base = c.base_model or run.config.model
        base_dir = resolve_model_dir(base)
        glm_config = read_config(base_dir)
        base_config = chatglm_base_config(base_dir) if c.format == "chatglm" else None
        vocabulary = read_vocabulary(base_dir, glm_config.vocab_size) if c.format == "gguf" else None
        dtype = getattr(torch, DTYPE_NAMES[c.dtype])
        with torch.device("meta"):
            skeleton = GlmForCausalLM(glm_config)
        parameters = sum(p.numel() for p in skeleton.parameters())
        model_bytes = parameters * dtype.itemsize
        written_bytes = gguf_size(skeleton, c.gguf_type) if c.format == "gguf" else model_bytes
        merge_on = merge_device(c.device, model_bytes)
        output = place(c.target())
        if output.resolve() == base_dir.resolve():
            raise ConfigError("output", f"{output} is the base model's folder; choose another folder")
        replaced = earlier_export(output, c.overwrite)
        reserved = reserve(output, "exporting")  # one export at a time into a folder
        if reserved is None:
            raise RunDirError(f"another process is exporting to {output}; wait for it to finish (or stop it), then "
                              "run this again")
        scratch, self.scratch_claim = reserved
        needed = written_bytes + 64 * 2**20  # tokenizer and configs
        free = files.free_bytes(scratch)
        # With room for both, the earlier export stays whole until the new one is published; without,
        # it must go first, and a failure then leaves neither.
        delete_first = free < needed
        free += sum(p.stat().st_size for p in replaced)
        if free < needed:
            raise RunDirError(f"{output}: the export needs {size(needed)} and the disk has {size(free)} free; "
                              "free some space or choose another --output")
        template = run.resolved.prompt_format if c.chat_template == "trained" else "chat"
        return Plan(run, base, base_dir, glm_config, base_config, tokenizer, vocabulary, dtype, parameters, merge_on,
                    output, scratch, tuple(replaced), delete_first, template)

    def merge(self, plan: Plan) -> Merged:
        """The base in 16 bits (or fp32) with the adapter merged into its weights; for the native
        layout, the tokenizer as deployed, with the chosen chat template."""
        import torch

        from ..core import device
        from ..model.loading import load_model
        from ..model.lora import load_adapter

        c = self.config
        device.reset_peak()
        started = time.perf_counter()
        try:
            model = load_model(plan.base, quantization=None, dtype=plan.dtype,
                               device_map={"": device.gpu()} if plan.device == "cuda" else None)
        except torch.OutOfMemoryError:
            raise ModelLoadError(f"the {c.dtype} model does not fit in the GPU's free memory; export with --device cpu "
                                 "(it needs about the model's size in RAM)") from None
        loaded = time.perf_counter()
        model = load_adapter(model, c.adapter, plan.base)  # names an adapter that does not fit the base
        model = model.merge_and_unload(progressbar=True).eval()
        tokenizer = deployment_tokenizer(plan.tokenizer, chat_template(plan.template)) if c.format == "native" else None
        return Merged(model, tokenizer, {"load": loaded - started, "merge": time.perf_counter() - loaded})

    def write(self, plan: Plan, merged: Merged) -> ExportResult:
        """The chosen layout and the manifest, written into the scratch folder and published by one
        rename (into an empty folder: the manifest first, config.json or the .gguf last, since a folder
        without it loads nowhere): a killed export never looks complete."""
        from ..core import device
        from .gguf import modelfile, write_gguf

        started = time.perf_counter()
        c, out, scratch = self.config, plan.output, plan.scratch
        if plan.delete_first:
            print(f"deleting the earlier export in {out} first: the disk has no room for both")
            for line in delete(out, list(plan.replaced), "--output"):
                print(line)
        last = "config.json"  # the file whose presence says the folder is whole: it is published last
        if c.format == "native":
            write_native(merged.model, merged.tokenizer, scratch)
        elif c.format == "chatglm":
            write_chatglm(merged.model, plan.base_config, plan.base_dir, c.dtype, scratch)
        else:
            last = gguf_name(c)
            write_gguf(merged.model, plan.vocabulary, chat_template(plan.template), scratch / last, c.gguf_type,
                       name=c.adapter.resolve().name)
            (scratch / "Modelfile").write_text(modelfile(last, plan.template, plan.glm_config.max_position_embeddings),
                                               encoding="utf-8")
        written = sorted(p.name for p in scratch.iterdir() if not is_own_scratch(p.name))
        files.write_atomic(scratch / MANIFEST, json.dumps(manifest(c, plan, written), indent=2,
                                                          ensure_ascii=False) + "\n")
        for name in written:
            os.chmod(scratch / name, 0o666 & ~files.umask())  # some writers create files only their owner reads
        if not replaceable(out, written_by_export(out), c.overwrite):
            raise RunDirError(f"{out} gained files while the export ran, which it must not replace; nothing there was "
                              "changed. Move them out, or choose another --output, and export again")
        publish(scratch, out, last=last, record=MANIFEST)
        seconds = {**merged.seconds, "write": time.perf_counter() - started, "total": time.perf_counter() - self.began}
        names = [*written, MANIFEST]
        return ExportResult(
            adapter=c.adapter, output=out, format=c.format, dtype=c.dtype, device=plan.device, base=plan.base,
            parameters=plan.parameters, trained=plan.run.resolved.prompt_format, template=plan.template,
            gguf_type=c.gguf_type if c.format == "gguf" else None, files=names,
            bytes=sum((out / n).stat().st_size for n in names), seconds=seconds, peak_gpu_gib=device.peak_gib())


def manifest(c: ExportConfig, plan: Plan, written: list[str]) -> dict:
    """The export's record: what it was made from, and the files it wrote (which --overwrite deletes)."""
    return {"adapter": str(c.adapter.resolve()), "base_model": plan.base, "format": c.format, "dtype": c.dtype,
            **({"gguf_type": c.gguf_type} if c.format == "gguf" else {}), "parameters": plan.parameters,
            "files": written,
            "run": {"data_sha256": plan.run.data_sha256, "settings": plan.run.config.to_dict()},
            "versions": library_versions()}


def summary(r: ExportResult) -> list[str]:
    """What was exported, its layout and size, and how to load it."""
    shards = sum(1 for n in r.files if n.endswith(".safetensors"))
    model_file = next((n for n in r.files if n.endswith(".gguf")), "")
    t = r.seconds
    layouts = {
        "native": f"{shards} safetensors shard{'s' if shards > 1 else ''}, config.json (glm), tokenizer.json with the "
                  "chat template, generation_config.json (stop tokens)",
        "chatglm": f"{shards} safetensors shard{'s' if shards > 1 else ''}, config.json (chatglm), tokenizer.model, "
                   "tokenizer_config.json",
        "gguf": f"{model_file} (llama.cpp's chatglm architecture, {r.gguf_type} weights, F32 norms and biases; "
                "ChatGLM3's vocabulary, stop tokens and chat template), Modelfile (Ollama)",
    }
    lines = [
        f"exported   {r.adapter} merged into {r.base} ({count(r.parameters)} parameters, {r.dtype}, on "
        f"{r.device}) -> {r.output}",
        f"layout     {r.format}: {layouts[r.format]}",
        f"size       {size(r.bytes)} on disk; {t['total']:.1f} s (loading {t['load']:.1f} s, merging "
        f"{t['merge']:.1f} s, writing {t['write']:.1f} s)"
        + (f"; peak GPU memory {r.peak_gpu_gib:.1f} GiB" if r.device == "cuda" else ""),
    ]
    if r.format in ("native", "gguf"):
        glm3 = "'[Round 1] 问：... 答：'"
        if r.template == "chat":
            lines.append("template   ChatGLM3's chat layout (<|user|> ... <|assistant|>)" + (
                f"; this adapter was trained on the {r.trained} layout ({glm3}), which it does not reproduce: "
                "--chat-template trained installs that one" if r.trained != "chat" else ""))
        else:
            lines.append(f"template   the {r.trained} layout this adapter was trained on ({glm3}), one question per "
                         "conversation (--chat-template trained)")
    if r.format == "native":
        lines += ["load it    from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"           model, tok = AutoModelForCausalLM.from_pretrained({str(r.output)!r}), "
                  f"AutoTokenizer.from_pretrained({str(r.output)!r})",
                  f"serve it   {command('vllm', 'serve', r.output)}"]
    elif r.format == "gguf":
        name = r.adapter.name.lower()
        lines += [f"run it     {command('llama-cli', '-m', r.output / model_file)}",
                  f"serve it   {command('llama-server', '-m', r.output / model_file)}",
                  f"ollama     {command('ollama', 'create', name, '-f', r.output / 'Modelfile')} && "
                  f"{command('ollama', 'run', name)}"]
    else:
        lines += ["load it    import glmtune",
                  f"           model, tok = glmtune.load_model({str(r.output)!r}, quantization=None), "
                  f"glmtune.load_tokenizer({str(r.output)!r})"]
        absent = [n for n in REMOTE_CODE if n not in r.files]
        if absent:
            lines.append(f"official   ChatGLM3's demos and chatglm.cpp load this layout with its remote code "
                         f"(transformers 4.x): copy {', '.join(absent)} from THUDM/chatglm3-6b into {r.output}")
    return lines


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def chatglm_base_config(base_dir: Path) -> dict:
    """The base's own config.json, which the chatglm layout starts from; the base must be in that
    layout, with its SentencePiece tokenizer.model."""
    raw = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") != "chatglm" or not (base_dir / "tokenizer.model").is_file():
        raise ModelLoadError(f"{base_dir} is not a ChatGLM3 checkpoint in the original layout (config.json with "
                             "model_type chatglm, and tokenizer.model), which --format chatglm is written from; "
                             "pass the official checkpoint as --base-model, or export --format native")
    return raw


def gguf_name(c: ExportConfig) -> str:
    """The GGUF file's name: the run's and the type, so that files of several exports can sit side by side."""
    return f"{c.adapter.resolve().name}-{c.gguf_type}.gguf"


def merge_device(choice: str, model_bytes: int) -> str:
    """Where the merge runs: the GPU where the 16-bit model fits in its free memory, else the CPU;
    ConfigError, before the base loads, where the chosen one cannot hold the model."""
    from ..core import device

    if choice == "cuda" and not device.cuda():
        raise ConfigError("device", "cuda: no CUDA GPU was found; use --device cpu (or auto)")
    # Headroom for the merge's temporaries and the CUDA context: 6B in bf16 (11.6 GiB) peaked at
    # 14.4 GiB on an H200 (bench/RESULTS.md).
    gpu_needs = 1.3 * model_bytes
    gpu_free = device.free_memory() if device.cuda() else 0
    if choice == "auto":
        choice = "cuda" if gpu_free > gpu_needs else "cpu"
    if choice == "cuda" and gpu_free <= gpu_needs:
        raise ConfigError("device", f"cuda: the merge needs about {size(gpu_needs)} of GPU memory and "
                                    f"{size(gpu_free)} is free; use --device cpu (about {size(model_bytes)} of RAM) "
                                    "or auto")
    if choice == "cpu" and (ram := device.ram_available()) < 1.1 * model_bytes:
        raise ConfigError("device", f"the merge on the CPU needs about {size(1.1 * model_bytes)} of RAM (the 16-bit "
                                    f"model) and {size(ram)} is available; close other programs, use a machine with "
                                    f"more memory, or a GPU with {size(gpu_needs)} free")
    return choice


def earlier_export(output: Path, overwrite: bool) -> list[Path]:
    """The earlier export in `output`, which --overwrite deletes; RunDirError when the folder holds anything without --overwrite, or anything its manifest does
    not list (a user's file: an export folder is replaced whole)."""
    if output.exists() and not output.is_dir():
        raise RunDirError(f"{output} is a file; choose a folder")
    if not output.is_dir():
        return []
    entries = [p for p in sorted(output.iterdir()) if not is_own_scratch(p.name)]
    if not entries:
        return []
    if not overwrite:
        raise RunDirError(f"{output} is not empty ({few(entries)}); choose another --output, or pass --overwrite to "
                          "replace the export in it")
    theirs = foreign(output, written_by_export(output))
    if theirs:
        raise RunDirError(f"{output} holds files no export wrote ({few(theirs)}); --overwrite replaces "
                          f"only an earlier export, the files its {MANIFEST} lists. Choose another --output")
    return entries


def written_by_export(folder: Path) -> Callable[[Path], bool]:
    """Whether an entry of `folder` is a file the export there wrote: its manifest, or a file it
    lists (the manifest read once, not per entry)."""
    ours = {MANIFEST, *manifest_files(folder)}
    return lambda path: path.is_file() and not path.is_symlink() and path.name in ours


def manifest_files(folder: Path) -> list[str]:
    """The files an earlier export in `folder` wrote, from its manifest; none if it has no readable one."""
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []


def deployment_tokenizer(tokenizer, template: str = CHAT_TEMPLATE):
    """`tokenizer` (changed in place) as deployment needs it: the chat `template`, and control tokens
    matched in text, which is how a template's control tokens become ids (see the module's notes);
    "sop" and "eop" match only as whole words, so "esophagus" and "people" stay text."""
    from tokenizers import AddedToken

    tokenizer.backend_tokenizer.add_special_tokens(
        [AddedToken(t, single_word=True, normalized=False, special=True) for t in ("sop", "eop")])
    tokenizer.split_special_tokens = False
    tokenizer.chat_template = template
    return tokenizer


def write_native(model, tokenizer, folder: Path) -> None:
    """The merged model in transformers' native layout, with `tokenizer` (a `deployment_tokenizer`)."""
    from transformers import GenerationConfig

    from ..model.tokenizer import stop_token_ids

    model.generation_config = GenerationConfig(eos_token_id=stop_token_ids(tokenizer),
                                               pad_token_id=tokenizer.pad_token_id)
    # save_pretrained would write the names the model was loaded from through a registered conversion
    # mapping, and glmtune registers ChatGLM3's for every glm model: the native layout keeps its own.
    model.save_pretrained(folder, max_shard_size=SHARD_BYTES, save_original_format=False)
    tokenizer.save_pretrained(folder)
    readable_by_transformers_4(folder)


def readable_by_transformers_4(folder: Path) -> None:
    """Also say in transformers 4's words what transformers 5 wrote, so serving stacks still on 4.x
    read the same model and tokenizer (checked with 4.57): the rope settings at the top of
    config.json (5 reads rope_parameters, 4 these), a tokenizer class 4 has (in 5 the same class), and
    4's name for the extra special tokens."""
    config_file, tokenizer_file = folder / "config.json", folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rope = config["rope_parameters"]
    config |= {"rope_theta": rope["rope_theta"], "partial_rotary_factor": rope.get("partial_rotary_factor", 1.0),
               "torch_dtype": config["dtype"]}
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    tokenizer.pop("backend", None)
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer["additional_special_tokens"] = tokenizer.pop("extra_special_tokens")
    tokenizer_file.write_text(json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def chatglm_tensors(model) -> list[tuple[str, list]]:
    """(original name, the native tensors it is made of) for every tensor of ChatGLM3's checkpoint:
    q/k/v are fused back into query_key_value in that order (rows: q heads, k groups, v groups). The
    MLP needs no reordering: GLM's gate_up_proj and ChatGLM3's dense_h_to_4h both put the half that
    goes through silu first."""
    import torch

    config = model.config
    state = model.state_dict()
    used: set[str] = set()

    def take(*names: str) -> list:
        used.update(names)
        return [state[n] for n in names]

    rotary = int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 0.5))
    steps = torch.arange(0, rotary, 2, dtype=torch.float32) / rotary
    inv_freq = 1.0 / config.rope_parameters["rope_theta"] ** steps  # recomputed by every loader; kept for the name set
    embedding = state["model.embed_tokens.weight"]
    tensors = [("transformer.embedding.word_embeddings.weight", take("model.embed_tokens.weight")),
               ("transformer.rotary_pos_emb.inv_freq", [inv_freq.to(embedding.dtype)])]
    for i in range(config.num_hidden_layers):
        n, o = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        tensors += [
            (o + "input_layernorm.weight", take(n + "input_layernorm.weight")),
            (o + "self_attention.query_key_value.weight",
             take(*(n + f"self_attn.{p}_proj.weight" for p in "qkv"))),
        ]
        if n + "self_attn.q_proj.bias" in state:
            tensors.append((o + "self_attention.query_key_value.bias",
                            take(*(n + f"self_attn.{p}_proj.bias" for p in "qkv"))))
        tensors += [
            (o + "self_attention.dense.weight", take(n + "self_attn.o_proj.weight")),
            (o + "post_attention_layernorm.weight", take(n + "post_attention_layernorm.weight")),
            (o + "mlp.dense_h_to_4h.weight", take(n + "mlp.gate_up_proj.weight")),
            (o + "mlp.dense_4h_to_h.weight", take(n + "mlp.down_proj.weight")),
        ]
    tensors += [("transformer.encoder.final_layernorm.weight", take("model.norm.weight")),
                ("transformer.output_layer.weight", take("lm_head.weight"))]
    left = sorted(set(state) - used)
    if left:
        raise ModelLoadError(f"the merged model has tensors ChatGLM3's layout has no place for "
                             f"({few(left)}); export it with --format native")
    return tensors


def write_chatglm(model, base_config: dict, base_dir: Path, dtype: str, folder: Path) -> None:
    """ChatGLM3's original checkpoint: its config.json (the base's, with the new dtype), tensors under
    their original names in safetensors shards, and its tokenizer files."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    tensors = chatglm_tensors(model)
    shards: list[list[tuple[str, list]]] = [[]]
    size = 0
    for name, parts in tensors:
        nbytes = sum(p.numel() * p.element_size() for p in parts)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, parts))
        size += nbytes
    total = sum(p.numel() * p.element_size() for _, parts in tensors for p in parts)
    names = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc="Writing chatglm shards") as bar:
        for file_name, shard in zip(names, shards):
            data = {name: (parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous().cpu()
                    for name, parts in shard}
            save_file(data, str(folder / file_name), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(data, file_name)
            bar.update(sum(t.numel() * t.element_size() for t in data.values()))
            del data
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = {**base_config, "torch_dtype": DTYPE_NAMES[dtype]}
    config.setdefault("auto_map", OFFICIAL_AUTO_MAP)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(base_dir / "tokenizer.model", folder / "tokenizer.model")
    tokenizer_config = base_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        shutil.copyfile(tokenizer_config, folder / "tokenizer_config.json")
    else:
        (folder / "tokenizer_config.json").write_text(json.dumps(OFFICIAL_TOKENIZER_CONFIG, indent=2) + "\n",
                                                      encoding="utf-8")
    for name in REMOTE_CODE:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, folder / name)


def export(config: ExportConfig) -> ExportResult:
    """Run every stage of an export; returns what was written, its size and the time each stage took."""
    with Export(config) as job:  # holds the run and the output's scratch until it is left
        plan = job.plan()  # the run, its base, the target folder and disk space: refusals before any loading
        merged = job.merge(plan)  # the 16-bit base with the adapter merged into its weights
        return job.write(plan, merged)  # the chosen layout, into scratch, published by one rename


def main(config: ExportConfig) -> None:
    print("\n".join(summary(export(config))))
