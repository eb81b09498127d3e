"""The comparison job, in named stages: the training run → prompts → tokenizer and model (one copy
of the weights serving both sides, base first: `inference.Sides`) → both sides' answers → scores and
reports. `glmtune compare` and `glmtune chat` (`chatglm_finetuning_tst.py`) run the stages;
`compare(config)` runs them all.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ..core import device, distributed
from ..core.config import CompareConfig
from ..data.reading import TRAIN_PROMPTS, Example, prompt_digest, read_dataset, read_prompt_digests
from ..core.errors import ConfigError, DataError, RunDirError
from ..model.sources import needs_gpu
from ..core.folders import claim, foreign, free, numbered, place, publish, remove, replaceable, reserve, scratch_for
from ..model.lora import check_adapter_files
from ..training.runs import REPORT_STEM as STEM, RunRecord, is_report_file


class Comparison:
    """Base vs fine-tuned on the same prompts. Each stage leaves its results as attributes. Used as
    a context manager: on leaving, the run folder is free again, and a report not written whole
    leaves nothing behind."""

    def __init__(self, config: CompareConfig):
        self.config = config
        self.began = time.perf_counter()
        self.claims: list = []  # the run folder (shared with other readers), the report's scratch
        self.scratch: Path | None = None  # the report's files until they are published whole

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *exc) -> None:
        if self.scratch is not None and self.scratch.exists():
            remove(self.scratch)
        for held in self.claims:
            held.release()

    def load_run(self) -> None:
        """The training run's record (which base, quantization and prompt layout to use) and the
        term lexicon: everything a bad file could stop, checked before any model loads."""
        from .metrics import DEFAULT_LEXICON_PATH

        distributed.start()
        c = self.config
        # Shared with other comparisons and exports; no training may start over the run meanwhile,
        # and one still training here is named, not taken for an unfinished run.
        self.claims.append(claim(c.adapter, "comparing", shared=True))
        check_adapter_files(c.adapter)
        self.run = RunRecord.load(c.adapter)
        self.base = c.base_model or self.run.config.model
        self.prompt_format = self.run.resolved.prompt_format
        self.terms_file = c.terms_file or DEFAULT_LEXICON_PATH
        if not c.chat:  # before any model: a bad --terms-file must not waste a run
            self.lexicon = load_lexicon(self.terms_file)
        if not device.cuda() and needs_gpu(self.base):
            raise ConfigError("base_model", f"{self.base} (this adapter's base) is a 6B model that needs a CUDA GPU, "
                                            "and none was found. For a CPU demo, train with --model tiny and compare "
                                            "that adapter.")

    def load_prompts(self) -> None:
        """(example, reference answer or None) pairs: ad-hoc questions, --data, or the eval split.
        Prompts the adapter was trained on are left out (ad-hoc ones flagged): a verdict on them
        measures recall, not what the fine-tune does for new questions."""
        c = self.config
        seen = read_prompt_digests(c.adapter)  # None: a run trained before it recorded them
        if c.prompt:
            self.items = [(Example(q, "", 0), None) for q in c.prompt]
            self.source = "--prompt"
            flagged = [i for i, (ex, _) in enumerate(self.items, 1) if seen is not None and prompt_digest(ex) in seen]
            self.flagged = [f"--prompt {i} ({c.prompt[i - 1][:30]}) was seen in training: its answers are not "
                            "held-out" for i in flagged]
            self.overlap = overlap_fact(c.adapter, seen, len(flagged), len(c.prompt), "kept but flagged")
        else:
            path = c.data or c.adapter / self.run.resolved.eval_file
            self.source = str(path)
            if c.data is None and path.is_file() and path.stat().st_size == 0:
                raise DataError(f"{path}: no prompts to compare, the eval split is empty. Train with --eval-ratio > "
                                "0, or pass --data FILE or --prompt QUESTION")
            examples = read_dataset(path).examples  # DataError for a file with no usable example
            held_out = [ex for ex in examples if seen is None or prompt_digest(ex) not in seen]
            if not held_out:
                raise DataError(f"{path}: all {len(examples)} prompts were seen in training, so a verdict on them "
                                "says nothing about new questions; compare on held-out prompts: the run's eval "
                                "split (drop --data) or a file of questions it was not trained on")
            self.items = [(ex, ex.answer) for ex in held_out][: c.num_samples or None]
            self.overlap = overlap_fact(c.adapter, seen, len(examples) - len(held_out), len(examples), "left out")
            self.flagged = []
            if self.prompt_format == "glm3" and any(ex.conversational for ex, _ in self.items):
                raise DataError(f"{path} holds conversations, and this adapter was trained on the glm3 layout, "
                                "which has none; compare it on question/answer data")

    def load_model(self) -> list[str]:
        """The tokenizer saved with the adapter; how to hold the weights and decode (from the free
        memory and the work); the model. Returns the lines that say which path runs and why."""
        from .generation import Decoding
        from .inference import Shape, Sides, cache_length, plan_compile, plan_weights
        from ..model.prompts import encode, example_prompt_ids
        from ..model.tokenizer import load_tokenizer

        c = self.config
        self.tokenizer = load_tokenizer(c.adapter)
        self.prompts = [example_prompt_ids(self.tokenizer, ex, self.prompt_format) for ex, _ in self.items]
        width = max(map(len, self.prompts))
        room = room_for_prompts(self.tokenizer.model_max_length, c.max_new_tokens, min(map(len, self.prompts)))
        if width > room:
            longest = max(range(len(self.prompts)), key=lambda i: len(self.prompts[i]))
            raise DataError(f"prompt {longest + 1} ({self.items[longest][0].question[:30]}...) is {width} tokens; with "
                            f"--max-new-tokens {c.max_new_tokens} the context ({self.tokenizer.model_max_length}) has "
                            f"room for {room}. Shorten it, or lower --max-new-tokens")
        cache_len = cache_length(width, c.max_new_tokens)
        # what perplexity reads: prompt + reference + eos, encoded as training encoded them (by item)
        self.scored = {} if c.no_perplexity else {
            i: encode(self.tokenizer, ex, self.prompt_format, self.run.config.max_length)
            for i, (ex, reference) in enumerate(self.items) if reference is not None}
        scored_len = max((len(row.input_ids) for row in self.scored.values()), default=0)
        self.mine = distributed.share(len(self.prompts))  # this process's prompts; all of them with one
        free = min(distributed.gather(device.free_memory()))  # the fullest GPU's

        def plan():  # rank 0 decides for all, so that every process holds the weights and decodes alike
            weights = plan_weights(c.quantization, self.run.config.quantization, Shape.of_model(self.base),
                                   free, len(self.mine), width, cache_len, c.batch_size, device.cuda(), scored_len)
            compiling = plan_compile(c.compile, weights, len(self.mine), c.max_new_tokens, cache_len, self.base,
                                     device.cuda())
            return weights, compiling, self._reserve_output()  # after every check, before any model

        self.weights, self.compiling, self.output = distributed.on_main(plan)
        self.decoding = Decoding(c.max_new_tokens, c.do_sample, c.temperature, c.top_p, c.seed, cache_len,
                                 self.compiling.on)
        self.sides = Sides.load(self.base, c.adapter, self.weights)
        return [f"weights:  {self.weights.describe()}", f"decoding: static KV cache, {self.compiling.reason}"]

    def generate(self) -> None:
        """Both sides' answers (and reference perplexities), each timed on its own; the base side
        first, then the fine-tuned side (merging the adapter, where the weights are 16-bit)."""
        from .generation import warm_up
        from ..training.compiling import record_compile_cost

        with self.sides.base_side() as model:
            self.loaded = time.perf_counter()
            mine = [self.prompts[i] for i in self.mine]
            self.warm_up_s = max(distributed.gather(warm_up(model, self.tokenizer, mine, self.decoding,
                                                            self.weights.batch_size)))
            if self.compiling.on and distributed.is_main():
                record_compile_cost(self.compiling.key, self.warm_up_s)
            self.plain = self._side(model, "base")
        began = time.perf_counter()
        model = self.sides.tuned_side()
        self.merge_s = time.perf_counter() - began
        self.tuned = self._side(model, "tuned")

    def _side(self, model, side: str) -> tuple[list, list, dict]:
        """One side's answers and perplexities, in item order. With several processes each runs its
        own share of the prompts, and every process ends with all of them."""
        from .generation import generate_answers, reference_perplexity

        device.reset_peak()
        began = time.perf_counter()
        answers = generate_answers(model, self.tokenizer, [self.prompts[i] for i in self.mine], self.decoding,
                                   self.weights.batch_size, desc=side)
        wall = time.perf_counter() - began
        scored = [i for i in self.mine if i in self.scored]
        values = reference_perplexity(model, [self.scored[i] for i in scored], self.tokenizer.pad_token_id,
                                      self.weights.perplexity_batch)
        shares = distributed.gather((list(self.mine), answers, dict(zip(scored, values)), wall, device.peak_gib()))
        every: list = [None] * len(self.items)
        ppl: list = [None] * len(self.items)
        for indices, part, perplexities, _, _ in shares:
            for i, answer in zip(indices, part):
                every[i] = answer
            for i, value in perplexities.items():
                ppl[i] = value
        wall = max(share[3] for share in shares)  # the processes decode at the same time
        new_tokens = sum(a.new_tokens for a in every)
        timing = {"wall_s": wall, "new_tokens": new_tokens, "tok_per_s": new_tokens / wall if wall else 0.0,
                  "peak_gpu_gib": max(share[4] for share in shares) if device.cuda() else None}
        return every, ppl, timing

    def score(self) -> list[str]:
        """Score both sides; return the summary (verdict, tables, timing), which the script prints
        before any file is written, so a full disk cannot take the results with it."""
        from .scoring import Sample, score, summary_lines

        c = self.config
        scoring = time.perf_counter()
        (tuned, tuned_ppl, tuned_timing), (plain, base_ppl, base_timing) = self.tuned, self.plain
        samples = [Sample(ex.question, reference, {"base": plain[i], "tuned": tuned[i]},
                          {"base": base_ppl[i], "tuned": tuned_ppl[i]}, ex.department)
                   for i, (ex, reference) in enumerate(self.items)]
        self.rows, self.aggregate = score(samples, self.lexicon)
        self.timing = {"base": base_timing, "tuned": tuned_timing, "load_s": self.loaded - self.began,
                       "warm_up_s": self.warm_up_s, "compiled": self.compiling.on, "merge_s": self.merge_s,
                       "weights": self.weights.describe(), "decoding": self.compiling.reason,
                       "score_s": time.perf_counter() - scoring}
        self.settings = {
            "adapter": str(c.adapter), "base_model": self.base, "weights": self.weights.describe(),
            "compile": self.compiling.reason,
            "prompt_format": self.prompt_format, "prompts": len(self.items), "prompt_source": self.source,
            "decoding": "sampling" if c.do_sample else "greedy", "max_new_tokens": c.max_new_tokens,
            "batch_size": c.batch_size, "seed": c.seed, "terms_file": str(self.terms_file), "device": device.name(),
            "processes": distributed.world_size(), "seen_in_training": self.overlap}
        self.summary = summary_lines(self.aggregate, self.timing, (self.overlap, *self.flagged))
        return self.summary

    def answers_side_by_side(self, width: int) -> list[str]:
        """Each prompt with both answers in two columns, for --prompt (where there is no reference
        to score against, the answers are the result)."""
        from .scoring import side_by_side

        return side_by_side(self.rows, width)

    def write(self) -> None:
        """The log, the JSON report, the chart and the HTML report, each written whole or not at all
        (by rank 0, which speaks for all processes)."""
        self.outputs = [self.output / f"{STEM}.{ext}" for ext in ("log", "json", "png", "html")]
        distributed.on_main(self._write)

    def _reserve_output(self) -> Path:
        self.output, self.scratch, held = output_dir(self.config)
        self.claims.append(held)
        return self.output

    def _write(self) -> None:
        """Into the scratch folder, then published in one rename: a report folder never holds one
        comparison's log beside another's chart."""
        from .html_report import write_html
        from .plots import plot_aggregate
        from .scoring import write_log, write_report

        c = self.config
        log, report, chart, html = (self.scratch / p.name for p in self.outputs)
        write_log(log, self.settings, self.summary, self.rows, c.examples)
        write_report(report, self.settings, self.aggregate, self.timing, self.rows)
        plot_aggregate(chart, self.aggregate)
        write_html(html, self.settings, self.aggregate, self.timing, self.rows, chart)
        # A file a user put there while the models ran: the next free name instead, nothing of theirs touched.
        if not replaceable(self.output, is_report_file, c.overwrite):
            changed = self.output
            self.output = next(f for f in numbered(report_folder(self.config))
                               if free(f) and not scratch_for(f).exists())
            self.outputs = [self.output / p.name for p in self.outputs]
            print(f"{changed} gained files while the comparison ran; the report goes to {self.output} instead")
        publish(self.scratch, self.output, last=report.name)

    def closing_lines(self) -> list[str]:
        t = self.timing
        warm = "compile and warm-up" if t["compiled"] else "warm-up"
        return [f"total {time.perf_counter() - self.began:.1f} s: loading {t['load_s']:.1f} s, {warm} "
                f"{t['warm_up_s']:.1f} s, scoring {t['score_s']:.1f} s",
                f"wrote {self.output}/: {', '.join(p.name for p in self.outputs)}",
                f"open   {self.outputs[-1]} in a browser for every answer side by side"]


def overlap_fact(adapter: Path, seen: set[str] | None, count: int, total: int, done: str) -> str:
    """How many of the compared prompts the adapter was trained on, and what became of them."""
    if seen is None:
        return (f"whether these prompts were seen in training could not be checked: {adapter} was trained before "
                f"runs recorded {TRAIN_PROMPTS}")
    return f"{count} of {total} prompts were seen in training" + (f" and are {done}" if count else "")


def room_for_prompts(context: int, max_new_tokens: int, shortest: int) -> int:
    """Tokens the context leaves a prompt beside the answer; ConfigError naming --max-new-tokens
    when not even the shortest prompt (`shortest` tokens) fits but would with a lower value: the flag
    is at fault, not a prompt (one longer than the whole context is the prompt's fault)."""
    room = context - max_new_tokens
    if room < shortest < context:
        raise ConfigError("max_new_tokens", f"{max_new_tokens} leaves no room for a prompt: this model's context "
                                            f"holds {context} tokens, and the shortest prompt takes {shortest}; use "
                                            f"at most {context - shortest}")
    return room


def load_lexicon(path: Path):
    """The medical-term lexicon; a bad file is a DataError naming its line."""
    from .metrics import Lexicon

    try:
        return Lexicon.load(path)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the term list as UTF-8, one term per line") from None
    except ValueError as err:  # Lexicon.load names the file and line
        raise DataError(f"{err}; fix the term list (one term per line, '#' for comments)") from None


def output_dir(config: CompareConfig):
    """(where this comparison's files go, the scratch folder they are written into, its lock):
    --output or ADAPTER/comparison, or with an earlier report there (and no --overwrite), the first
    free NAME-2, NAME-3, ... Reserved at once, before any model loads (an unwritable place fails
    now, not after generation), so that a comparison started meanwhile numbers past it."""
    chosen = report_folder(config)
    if (config.output is not None or config.overwrite) and (chosen.is_symlink() or chosen.exists()) \
            and not chosen.is_dir():
        raise ConfigError("output", f"{chosen} is a file; choose a folder")
    if config.overwrite:
        theirs = foreign(chosen, is_report_file) if chosen.is_dir() else []
        if theirs:
            raise ConfigError("output", f"{chosen} holds files that are not a comparison report "
                                        f"({', '.join(p.name for p in theirs[:3])}); --overwrite replaces only "
                                        "reports. Choose another --output")
        reserved = reserve(chosen, "comparing")
        if reserved is None:
            raise RunDirError(f"another comparison is writing {chosen} now; let it finish, or drop --overwrite")
        return chosen, *reserved
    for folder in numbered(chosen):
        if free(folder) and (reserved := reserve(folder, "comparing")) is not None:
            return folder, *reserved


def report_folder(config: CompareConfig) -> Path:
    """--output (through a link, where it points), or ADAPTER/comparison."""
    return config.adapter / "comparison" if config.output is None else place(config.output)


def compare(config: CompareConfig) -> Comparison:
    """Run every stage of a comparison; returns the finished job (its `timing`, `outputs`, ...)."""
    with Comparison(config) as job:
        job.load_run()
        job.load_prompts()
        job.load_model()
        job.generate()
        job.score()
        job.write()
    return job


def main(config: CompareConfig) -> None:
    """The comparison command's stages, in order (`chatglm_finetuning_tst.py`, `glmtune compare`, `glmtune chat`)."""
    with Comparison(config) as job:  # on leaving: the run folder free again, no half-written report
        job.load_run()      # the training run: base model, quantization, prompt layout
        if config.chat:     # a conversation instead of a comparison
            from .chat import start, talk

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
