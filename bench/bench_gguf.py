"""Does llama.cpp itself run our GGUF as transformers runs the merged model? Checked with llama.cpp
(through llama-cpp-python), not with our own reader, for every --gguf-type:

- token ids: 200 real lines (../shared/realdata) tokenized by llama.cpp equal glmtune's tokenizer; 320
  chat prompts made from them (each question; every other one after a system prompt and the previous
  exchange; 20 with a tool's observation turn) rendered by the file's Jinja template (llama-server,
  llama-cli, llama-cpp-python) and by llama.cpp's built-in ChatGLM3 template (--no-jinja), then
  tokenized with control tokens parsed, equal glmtune.chat_ids;
- logits at the last position of chat prompts, llama.cpp's against transformers' (fp32 compute) on the
  same weights, within SAME_WEIGHTS_BOUND, and against the merged model itself; the 32 greedy tokens
  (skipped, and said so, where two fp32 copies of the model do not fit in RAM: 6B on a CPU);
- stops: llama.cpp's end-of-generation tokens are exactly eos, <|user|> and <|observation|>, and a
  completion that samples one of them ends there, with none of its text in the answer;
- the Ollama Modelfile's template, run by Go's text/template (ollama_template.go; when Go is
  installed), renders the same prompts as the GGUF's template;
- size, export time, load time, prompt and generation tokens/s (CPU; GPU when the build has CUDA).

llama-cpp-python builds llama.cpp from source (about 20 minutes on 2 cores), too slow for CI, so this is
a bench part: install it first (never in requirements.txt), then

    pip install llama-cpp-python==0.3.36                      # or a wheel built once: pip wheel ... -w DIR
    python bench/bench_gguf.py                                 # tiny model, CPU, every type: ~20 s on 2 cores
    python bench/bench_gguf.py --model real-vocab              # the tiny shape with ChatGLM3-6B's vocabulary: ~1 min
    python bench/bench_gguf.py --model 6b --types q4_0         # ChatGLM3-6B's shape, random weights (GPU box;
                                                               # on a CPU without the logit check)
    python bench/bench_gguf.py --model /data/chatglm3-6b       # a real checkpoint, a random LoRA adapter on it

The tiny model is a run trained here (12 steps); real-vocab, 6b and a checkpoint folder get a random
LoRA adapter (nonzero B, so the merge changes every target). All are built once under --workdir.
Prints a table, exits 1 when a check fails, and merges its figures into bench/results/latest.json
(gguf_tiny, gguf_real_vocab, or gguf with gguf_export_s and gguf_size_gib per type for a 6B model).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import glmtune  # noqa: E402
from glmtune.core import cli  # noqa: E402
from glmtune.core.config import ExportConfig, TrainConfig  # noqa: E402
from glmtune.core.device import ram_available  # noqa: E402
from glmtune.data.reading import read_dataset  # noqa: E402
from glmtune.export.job import Export  # noqa: E402
from glmtune.model.prompts import chat_ids, sp_ids  # noqa: E402

TYPES = ("bf16", "q8_0", "q4_0")
# Logits at the last position, max |difference| as a fraction of the largest |logit| there, against
# transformers on the same weights: the merged model's bf16 weights, for q8_0/q4_0 first quantized and
# dequantized by gguf's own code, computed in fp32. What is left is llama.cpp's arithmetic (its CPU
# matmuls round activations to bf16, or to q8_0 blocks against quantized weights), so a wrong layout
# shows at once: a swapped half or a misplaced head moves logits by their own size.
SAME_WEIGHTS_BOUND = {"bf16": 0.02, "q8_0": 0.05, "q4_0": 0.05}
# Against the merged model itself (quantization error included): looser, and only stated for the tiny
# trained run, whose logits have a clear top; random weights give flat logits that no bound fits.
MERGED_BOUND = {"bf16": 0.02, "q8_0": 0.05, "q4_0": 0.25}
SYSTEM = "你是一名医生，回答要简短。"


def tiny_run(workdir: Path) -> Path:
    """A finished tiny run (trained once, then reused)."""
    from glmtune.training.job import train
    from glmtune.training.runs import FINISHED, RunRecord

    run = workdir / "tiny-run"
    if (run / "run_config.json").is_file() and RunRecord.load(run).state == FINISHED:
        return run
    config, _ = cli.parse_args(TrainConfig, "bench", ["--model", "tiny", "--output-dir", str(run), "--max-steps",
                                                      "12", "--learning-rate", "5e-3", "--eval-ratio", "0.1",
                                                      "--batch-size", "4", "--grad-accum", "2", "--overwrite"])
    train(config)
    return run


def real_vocab_checkpoint(shared: Path, workdir: Path) -> Path:
    """The tiny model's shape with ChatGLM3-6B's own tokenizer.model and 65,024-row embedding (random
    weights): the real vocabulary checked in llama.cpp on a CPU in seconds."""
    from glmtune.model.tiny import TINY_SHAPE, original_config, random_original_weights, write_original_checkpoint

    folder = workdir / "tiny-real-vocab"
    if not (folder / "model.safetensors").is_file():
        official = json.loads((shared / "chatglm3" / "config.json").read_text())
        config = original_config(64789, **TINY_SHAPE) | {"padded_vocab_size": official["padded_vocab_size"]}
        write_original_checkpoint(folder, config, random_original_weights(config))
        (folder / "tokenizer.model").write_bytes((shared / "chatglm3" / "tokenizer.model").read_bytes())
    return folder


def random_adapter_run(checkpoint: Path, workdir: Path) -> Path:
    """A finished run folder holding a random LoRA adapter (nonzero B) on `checkpoint` (made once)."""
    from peft import get_peft_model

    from glmtune.model.loading import load_model
    from glmtune.training.runs import FINISHED, RunRecord, file_sha256

    sys.path.insert(0, str(REPO / "bench"))
    from bench_gpu import random_lora

    run = workdir / f"adapter-{checkpoint.name}"
    if (run / "run_config.json").is_file():
        return run
    model = load_model(checkpoint, quantization=None, dtype=torch.bfloat16,
                       device_map={"": "cuda"} if torch.cuda.is_available() else None)
    torch.manual_seed(0)
    get_peft_model(model, random_lora()).save_pretrained(run, save_embedding_layers=False)
    del model
    glmtune.load_tokenizer(checkpoint).save_pretrained(run)
    record = RunRecord(TrainConfig(model=str(checkpoint), output_dir=run), file_sha256(run / "tokenizer.json"),
                       FINISHED)
    record.resolved.prompt_format = "chat"
    record.save(run)
    return run


def conversations(lines_file: Path) -> list[list[dict]]:
    """Chat prompts from the real lines: each question alone, (for every other line) with a system
    prompt and the previous line's exchange before it, and (the first 20) followed by a tool call's
    observation."""
    examples = read_dataset(lines_file).examples
    found = [[{"role": "user", "content": e.question}] for e in examples]
    for before, e in zip(examples[::2], examples[1::2]):
        found.append([{"role": "system", "content": SYSTEM}, {"role": "user", "content": before.question},
                      {"role": "assistant", "content": before.answer}, {"role": "user", "content": e.question}])
    for e in examples[:20]:  # a tool's answer as ChatGLM3's observation turn
        found.append([{"role": "user", "content": e.question}, {"role": "assistant", "content": "查询体温记录。"},
                      {"role": "observation", "content": '{"temperature": 38.5, "unit": "°C"}'}])
    return found


def builtin_template_prompt(llm, messages: list[dict]) -> str:
    """The prompt llama.cpp's built-in template detection makes from the file's template (--no-jinja)."""
    import llama_cpp

    template = llama_cpp.llama_model_chat_template(llm.model, None)
    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
    size = llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, None, 0)
    if size < 0:
        return ""  # llama.cpp did not recognise the template
    buffer = (llama_cpp.ctypes.c_char * (size + 1))()
    llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, buffer, size + 1)
    return buffer.raw[:size].decode()


def last_logits(llm, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm.reset()
    llm.eval(ids)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def greedy(llm, ids: list[int], new: int, eog: set[int]) -> list[int]:
    """llama.cpp's greedy continuation (argmax of its logits), stopping at an end-of-generation token."""
    import llama_cpp

    out: list[int] = []
    logits = last_logits(llm, ids)
    for _ in range(new):
        token = int(np.argmax(logits))
        out.append(token)
        if token in eog:
            break
        llm.eval([token])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return out


def check_type(args, run: Path, gguf_type: str, tok, chats, lines, reference) -> dict:
    """Export `run` as `gguf_type`, load it in llama.cpp, compare; returns the figures."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    out = args.workdir / f"export-{gguf_type}"
    config = ExportConfig(adapter=run, output=out, format="gguf", gguf_type=gguf_type, overwrite=True)
    with Export(config) as job:
        plan = job.plan()
        merged = job.merge(plan)
        result = job.write(plan, merged)
    # transformers' reference holds the merged model in fp32 twice (as merged, and as the GGUF holds it):
    # 50 GB for 6B, more than a CPU box has. Without it the logits and greedy tokens go unchecked.
    needs, ram = 8 * merged.model.num_parameters(), ram_available()
    with_reference = needs <= ram
    if with_reference:
        exact = merged.model.float().eval()  # the merged model's bf16 weights, computed in fp32
        if reference[0] is None:
            reference[0] = exact if gguf_type == "bf16" else copy.deepcopy(exact)
        if gguf_type != "bf16":
            as_quantized(exact, gguf_type)
    del merged
    path = next(out.glob("*.gguf"))
    r = {"export_s": result.seconds["total"], "size_bytes": path.stat().st_size, "size_gib": path.stat().st_size / 2**30,
         "reference": with_reference, "reference_needs_gib": needs / 2**30, "ram_available_gib": ram / 2**30}

    began = time.perf_counter()
    llm = llama_cpp.Llama(str(path), n_ctx=args.n_ctx, n_gpu_layers=0, n_threads=os.cpu_count(), verbose=False)
    r["load_s"] = time.perf_counter() - began
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    stops = glmtune.stop_token_ids(tok)
    r["eog"] = sorted(eog)
    r["eog_ok"] = eog == set(stops)

    r["lines"] = len(lines)
    r["lines_equal"] = sum(llm.tokenize(line.encode(), add_bos=False, special=False) == sp_ids(tok, line)
                           for line in lines)
    jinja = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    r["chats"] = len(chats)
    jinja_equal = builtin_equal = 0
    for messages in chats:
        expected = chat_ids(tok, messages)
        rendered = jinja(messages=messages).prompt
        jinja_equal += llm.tokenize(rendered.encode(), add_bos=False, special=True) == expected
        builtin_equal += llm.tokenize(builtin_template_prompt(llm, messages).encode(), add_bos=False,
                                      special=True) == expected
    r["chats_equal_jinja"], r["chats_equal_builtin"] = jinja_equal, builtin_equal

    prompts = [chat_ids(tok, messages) for messages in chats[: args.logit_prompts]]
    same, versus_merged, argmax_same, generated = [], [], 0, []
    for ids in prompts if with_reference else []:
        ours = last_logits(llm, ids)
        theirs = forward(exact, ids)
        same.append(float(np.abs(ours - theirs).max()) / float(np.abs(theirs).max()))
        merged_logits = forward(reference[0], ids)
        versus_merged.append(float(np.abs(ours - merged_logits).max()) / float(np.abs(merged_logits).max()))
        argmax_same += int(np.argmax(ours) == np.argmax(theirs))
        generated.append(greedy_reference(exact, ids, args.new_tokens, stops, tok.pad_token_id))
    r["logit_prompts"] = len(same)
    r["relative_logit_diff"] = max(same, default=None)
    r["relative_logit_diff_vs_merged"] = max(versus_merged, default=None)
    r["argmax_equal"] = argmax_same
    # Greedy continuations: equal, or parting where transformers' two best tokens are closer than the
    # arithmetic's own difference (a near-tie, which rounding may decide either way).
    equal = near_tie = 0
    for ids, (tokens, margins, scale) in zip(prompts, generated):
        ours = greedy(llm, ids, args.new_tokens, eog)
        if ours == tokens:
            equal += 1
        else:
            at = next((i for i, (a, b) in enumerate(zip(ours, tokens)) if a != b), min(len(ours), len(tokens)))
            near_tie += at < len(margins) and margins[at] <= 2 * r["relative_logit_diff"] * scale[at]
    r["greedy_equal"], r["greedy_near_tie"] = equal, near_tie

    # A completion that samples a stop token ends there, its text left out of the answer: each stop
    # forced in turn (logit bias), and a control token that is not a stop (<|assistant|>) as the contrast.
    stop_check = {}
    for token in [*stops, tok.convert_tokens_to_ids("<|assistant|>")]:
        done = llm.create_completion(prompts[0], max_tokens=8, temperature=0.0, logit_bias={token: 1000.0})
        stop_check[tok.convert_ids_to_tokens(token)] = {"finish": done["choices"][0]["finish_reason"],
                                                        "tokens": done["usage"]["completion_tokens"],
                                                        "text": done["choices"][0]["text"]}
    r["stop_check"] = stop_check
    r["stops_ok"] = (all(v["finish"] == "stop" and v["text"] == "" for k, v in stop_check.items() if k != "<|assistant|>")
                     and stop_check["<|assistant|>"]["finish"] == "length")

    r["modelfile"] = ollama_template_check(out, chats, llm.metadata["tokenizer.chat_template"])

    r |= speed(llm, prompts, args.new_tokens * 2, "cpu")
    del llm
    if llama_cpp.llama_supports_gpu_offload():
        began = time.perf_counter()
        llm = llama_cpp.Llama(str(path), n_ctx=args.n_ctx, n_gpu_layers=-1, verbose=False)
        r["load_gpu_s"] = time.perf_counter() - began
        r |= speed(llm, prompts, args.new_tokens * 2, "gpu")
        del llm
    r["pass"] = bool(r["eog_ok"] and r["stops_ok"] and r["lines_equal"] == r["lines"]
                     and r["chats_equal_jinja"] == r["chats"] and r["chats_equal_builtin"] == r["chats"]
                     and (not with_reference or r["relative_logit_diff"] <= SAME_WEIGHTS_BOUND[gguf_type])
                     and r["greedy_equal"] + r["greedy_near_tie"] == r["logit_prompts"]
                     and (r["modelfile"] is None or r["modelfile"]["equal"] == r["modelfile"]["conversations"])
                     and (args.model != "tiny" or r["relative_logit_diff_vs_merged"] <= MERGED_BOUND[gguf_type]))
    return r


def ollama_template_check(folder: Path, chats: list[list[dict]], template: str) -> dict | None:
    """The Modelfile's TEMPLATE run by Go's text/template (Ollama's engine; Ollama itself is not
    needed) against the GGUF's Jinja template: the same prompt strings? None without Go."""
    import shutil
    import subprocess

    import jinja2

    if shutil.which("go") is None:
        return None
    ollama = [[{**m, "role": "tool" if m["role"] == "observation" else m["role"]} for m in c] for c in chats]
    done = subprocess.run(["go", "run", str(REPO / "bench" / "ollama_template.go"), str(folder / "Modelfile")],
                          input=json.dumps(ollama), capture_output=True, text=True, check=True)
    rendered = json.loads(done.stdout)

    def refuse(message):
        raise ValueError(message)

    jinja = jinja2.Environment().from_string(template)
    expected = [jinja.render(messages=c, add_generation_prompt=True, raise_exception=refuse) for c in chats]
    return {"conversations": len(chats), "equal": sum(a == b for a, b in zip(rendered, expected))}


def as_quantized(model, gguf_type: str) -> None:
    """`model`'s weights (in place) as the GGUF holds them: each 2-D weight quantized and dequantized
    by gguf's own code, in the type the export gives it. Blocks run along rows, so q, k and v (or the
    MLP's halves) quantize the same apart as fused."""
    import gguf

    from glmtune.export.gguf import tensor_type

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() != 2:
                continue
            qtype = tensor_type("output.weight" if name == "lm_head.weight" else name, tuple(p.shape), gguf_type)
            w = p.detach().float().cpu().numpy()
            p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)))


def forward(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float().cpu().numpy()


def greedy_reference(model, ids: list[int], new: int, stops: list[int], pad: int):
    """transformers' greedy tokens, with the margin between its two best logits and the largest
    |logit| at each step."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids], device=model.device), max_new_tokens=new, do_sample=False,
                             eos_token_id=stops, pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
    top2 = [torch.topk(s[0].float(), 2).values for s in out.scores]
    return (out.sequences[0, len(ids):].tolist(), [float(t[0] - t[1]) for t in top2],
            [float(s[0].float().abs().max()) for s in out.scores])


def speed(llm, prompts: list[list[int]], new: int, where: str) -> dict:
    """Prompt processing and generation tokens/s: the longest prompt, then `new` tokens past any stop."""
    import llama_cpp

    ids = max(prompts, key=len)
    llm.reset()
    began = time.perf_counter()
    llm.eval(ids)
    prompt_s = time.perf_counter() - began
    token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))))
    began = time.perf_counter()
    for _ in range(new):
        llm.eval([token])
        token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                                    shape=(llm.n_vocab(),))))
    return {f"prompt_tok_s_{where}": len(ids) / prompt_s, f"gen_tok_s_{where}": new / (time.perf_counter() - began),
            "speed_prompt_tokens": len(ids)}


def table(results: dict, model: str) -> list[str]:
    lines = [f"GGUF export checked with llama.cpp (llama-cpp-python {results['llama_cpp_python']}), model {model}, "
             f"{results['cpu_threads']} CPU threads",
             f"{'type':5} {'size':>10} {'export':>7} {'load':>6} {'lines':>8} {'chat jinja':>10} {'built-in':>9} "
             f"{'rel same':>8} {'bound':>5} {'rel merged':>10} {'argmax':>6} {'greedy':>6} {'tie':>3} {'stops':>5} "
             f"{'Modelfile':>9} {'pp tok/s':>8} {'tg tok/s':>8} {'GPU tg':>6} {'':4}"]
    for t, r in results["types"].items():
        size = f"{r['size_gib']:.2f} GiB" if r["size_gib"] >= 1 else f"{r['size_bytes'] / 2**20:.2f} MiB"
        lines.append(
            f"{t:5} {size:>10} {r['export_s']:>6.1f}s {r['load_s']:>5.2f}s {r['lines_equal']:>4}/{r['lines']:<3} "
            f"{r['chats_equal_jinja']:>6}/{r['chats']:<3} {r['chats_equal_builtin']:>5}/{r['chats']:<3} "
            f"{number(r['relative_logit_diff'], 8)} {SAME_WEIGHTS_BOUND[t]:>5.2f} "
            f"{number(r['relative_logit_diff_vs_merged'], 10)} "
            f"{r['argmax_equal']:>3}/{r['logit_prompts']:<2} {r['greedy_equal']:>3}/{r['logit_prompts']:<2} "
            f"{r['greedy_near_tie']:>3} {'ok' if r['eog_ok'] and r['stops_ok'] else 'WRONG':>5} "
            f"{modelfile(r['modelfile']):>9} "
            f"{r['prompt_tok_s_cpu']:>8.0f} {r['gen_tok_s_cpu']:>8.1f} {r.get('gen_tok_s_gpu', float('nan')):>6.1f} "
            f"{'PASS' if r['pass'] else 'FAIL':4}")
    first = next(iter(results["types"].values()))
    lines += results["skipped"]
    lines += [f"lines: the {first['lines']} real lines tokenized by llama.cpp (control tokens not parsed) = glmtune's ids",
              f"chat: {first['chats']} chat prompts (each question; every other one again after a system prompt and "
              "the previous exchange; 20 with an observation turn), rendered by the file's Jinja template and by llama.cpp's built-in ChatGLM3 "
              "template, tokenized with control tokens parsed = glmtune.chat_ids",
              f"rel same: max |logit difference| / max |logit| at the last position of {first['logit_prompts']} chat "
              "prompts, llama.cpp vs transformers (fp32) on the same weights (bf16; q8_0/q4_0 dequantized by gguf); "
              f"rel merged: vs the merged model itself (quantization included; bounds {MERGED_BOUND} on the tiny run)",
              f"argmax: same top token; greedy: {results['new_tokens']} new tokens equal; tie: parted at a near-tie "
              "(transformers' top-2 margin <= 2 x rel same x max |logit|)",
              f"stops: end-of-generation ids {first['eog']} = eos, <|user|>, <|observation|>; each forced into a "
              "completion ends it with no text, <|assistant|> does not",
              "Modelfile: its TEMPLATE run by Go's text/template (Ollama's engine) renders the chat prompts as the "
              "GGUF's Jinja template does (- without Go); pp/tg: prompt and generation tokens/s, CPU"]
    return lines


def number(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def modelfile(check: dict | None) -> str:
    return "-" if check is None else f"{check['equal']}/{check['conversations']}"


def main(args) -> None:
    import llama_cpp

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        run = tiny_run(args.workdir)
    else:
        if args.model == "6b":
            sys.path.insert(0, str(REPO / "bench"))
            from bench_gpu import build_checkpoint

            checkpoint = build_checkpoint(args.shared, args.workdir / "chatglm3-6b-random")
        elif args.model == "real-vocab":
            checkpoint = real_vocab_checkpoint(args.shared, args.workdir)
        else:
            checkpoint = Path(args.model)
        run = random_adapter_run(checkpoint, args.workdir)
    tok = glmtune.load_tokenizer(run)
    lines_file = args.shared / "realdata" / "toyhom_internal_medicine_200.txt"
    lines = lines_file.read_text(encoding="utf-8").splitlines()
    chats = conversations(lines_file)
    reference = [None]
    results = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "llama_cpp_python": llama_cpp.__version__,
               "cpu_threads": os.cpu_count(), "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
               "new_tokens": args.new_tokens, "same_weights_bound": SAME_WEIGHTS_BOUND,
               "merged_bound": MERGED_BOUND, "types": {}}
    for gguf_type in args.types:
        results["types"][gguf_type] = check_type(args, run, gguf_type, tok, chats, lines, reference)
        print(f"{gguf_type}: {'PASS' if results['types'][gguf_type]['pass'] else 'FAIL'}", flush=True)
    results["skipped"] = [f"{t}: logits and greedy tokens NOT checked: transformers' fp32 reference (two copies of "
                          f"the model, {r['reference_needs_gib']:.0f} GiB) does not fit in the "
                          f"{r['ram_available_gib']:.0f} GiB of RAM available"
                          for t, r in results["types"].items() if not r["reference"]]
    print("\n".join(table(results, args.model)))
    out = Path(args.results)
    recorded = json.loads(out.read_text()) if out.is_file() else {}
    if args.model in ("tiny", "real-vocab"):
        recorded[f"gguf_{args.model.replace('-', '_')}"] = results
    else:
        recorded["gguf"] = results
        for key, field in (("gguf_export_s", "export_s"), ("gguf_size_gib", "size_gib")):
            recorded[key] = {**recorded.get(key, {}), **{t: r[field] for t, r in results["types"].items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(recorded, indent=2))
    sys.exit(0 if all(r["pass"] for r in results["types"].values()) else 1)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--model", default="tiny", help="tiny (default; a trained tiny run), real-vocab (the tiny shape "
                                                   "with ChatGLM3-6B's own vocabulary), 6b (random weights, bench_gpu's "
                                                   "checkpoint; drawn on the GPU if any), or a ChatGLM3 checkpoint folder")
    p.add_argument("--types", nargs="+", choices=TYPES, default=list(TYPES), help="GGUF types to check")
    p.add_argument("--logit-prompts", type=int, default=20, help="chat prompts whose logits and greedy tokens are "
                                                                 "compared")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    p.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp's context")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="folder with realdata/ (and chatglm3/)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/glmtune-bench-gguf"), help="runs and exports")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "latest.json"), help="JSON output")
    main(p.parse_args())
