"""The comparison job, in named stages: the training run → prompts → tokenizer and model (one copy
of the weights serving both sides, base first: `inference.Sides`) → both sides' answers → scores and
reports. Each stage returns what it found as a frozen record that the next stages take;
`comparison()` runs them in order, for the command (`main`: `glmtune compare`, `glmtune chat`,
`chatglm_finetuning_tst.py`) and the library (`compare`).
"""

from __future__ import annotations

import functools
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..core import device, distributed
from ..core.config import CompareConfig
from ..data.reading import TRAIN_PROMPTS, Example, prompt_digest, read_dataset, read_prompt_digests
from ..core.errors import ConfigError, DataError, ModelLoadError, RunDirError, few
from ..model.sources import needs_gpu
from ..core.folders import claim, foreign, free, numbered, place, publish, remove, replaceable, reserve, scratch_for
from ..model.lora import check_adapter_files
from ..training.runs import REPORT_STEM as STEM, RunRecord, is_report_file
from .report import NO_BENCHMARK_SETTING, Both, Report, Settings, SideTiming, Timing

if TYPE_CHECKING:  # these load torch; the job imports them when a stage needs them
    from transformers import PreTrainedTokenizerBase

    from .generation import Decoding, Generated
    from .inference import CompilePlan, Sides, WeightsPlan
    from .knowledge import EncodedExam, Exam, SideExam
    from .metrics import Lexicon
    from ..model.prompts import Encoded


@dataclass(frozen=True)
class TrainedRun:
    """The training run's record and what it settles for the comparison (`load_run`)."""
    record: RunRecord
    base: str  # --base-model, or the model the run trained
    prompt_format: str
    terms_file: Path
    lexicon: Lexicon | None  # None for --chat, which scores nothing


@dataclass(frozen=True)
class Prompts:
    """What both sides answer (`load_prompts`)."""
    items: list[tuple[Example, str | None]]  # (example, reference answer or None)
    source: str  # --prompt, --data's file or the eval split's
    overlap: str  # how many were seen in training, and what became of them
    flagged: list[str]  # one line per --prompt seen in training

    @property
    def notes(self) -> tuple[str, ...]:
        """What the verdict stands on, said under it."""
        return (self.overlap, *self.flagged)


@dataclass(frozen=True)
class Loaded:
    """The tokenizer, the prompts' ids, how the weights are held and decoding runs, and the model
    (`load_model`)."""
    tokenizer: PreTrainedTokenizerBase
    ids: list[list[int]]  # each prompt's, in item order
    scored: dict[int, Encoded]  # item -> prompt + reference + eos, which reference perplexity reads
    mine: range  # this process's items; all of them with one process
    weights: WeightsPlan
    compiling: CompilePlan
    decoding: Decoding
    sides: Sides
    exam: EncodedExam | None  # the knowledge check's questions as each side reads them

    def lines(self) -> list[str]:
        """Which weights and decoding run, and why."""
        return [f"weights:  {self.weights.describe()}", f"decoding: static KV cache, {self.compiling.reason}"]


@dataclass(frozen=True)
class SideAnswers:
    answers: list[Generated]  # in item order
    ppl: list[float | None]  # reference perplexity, in item order; None without a reference
    timing: SideTiming


@dataclass(frozen=True)
class Answers:
    """Both sides' answers (`generate`), and the time it took to get there."""
    base: SideAnswers
    tuned: SideAnswers
    load_s: float  # from the job's start until the base side could answer
    warm_up_s: float
    merge_s: float
    exam: Both[SideExam] | None  # each side's answers to the knowledge check


@dataclass(frozen=True)
class Compared:
    """A finished comparison: every stage's record, and where the report went."""
    run: TrainedRun
    prompts: Prompts
    exam: Exam | None
    loaded: Loaded
    answers: Answers
    report: Report
    summary: list[str]  # what the console shows: verdict, tables, timing
    output: Path
    outputs: list[Path]  # the log, JSON, chart and HTML report


class Comparison:
    """Base vs fine-tuned on the same prompts; the stages are its methods, each handed what the
    earlier ones returned. It holds what lives as long as the job: the settings, the start time and
    the folders. Used as a context manager: on leaving, the run folder is free again, and a report
    not written whole leaves nothing behind."""

    def __init__(self, config: CompareConfig):
        self.config = config
        self.began = time.perf_counter()
        self.claims: list = []  # the run folder (shared with other readers), the report's scratch
        self.scratch: Path | None = None  # the report's files until they are published whole
        self.output: Path | None = None  # the report's folder, reserved before any model loads
        self.outputs: list[Path] = []

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *exc) -> None:
        if self.scratch is not None and self.scratch.exists():
            remove(self.scratch)
        for held in self.claims:
            held.release()

    def load_run(self) -> TrainedRun:
        """The training run's record (which base, quantization and prompt layout to use) and the
        term lexicon: everything a bad file could stop, checked before any model loads."""
        from .metrics import DEFAULT_LEXICON_PATH

        distributed.start()
        c = self.config
        # Shared with other comparisons and exports; no training may start over the run meanwhile,
        # and one still training here is named, not taken for an unfinished run.
        self.claims.append(claim(c.adapter, "comparing", shared=True))
        check_adapter_files(c.adapter)
        record = RunRecord.load(c.adapter)
        base = c.base_model or record.config.model
        terms_file = c.terms_file or DEFAULT_LEXICON_PATH
        # before any model: a bad --terms-file must not waste a run
        lexicon = None if c.chat else load_lexicon(terms_file)
        if not device.cuda() and needs_gpu(base) and c.device != "cpu":
            raise ConfigError("base_model", f"{base} (this adapter's base) is a 6B model that needs a CUDA GPU, "
                                            "and none was found. For a CPU demo, train with --model tiny and compare "
                                            "that adapter; --device cpu runs it in RAM anyway (about 25 GiB, slow).")
        return TrainedRun(record, base, record.resolved.prompt_format, terms_file, lexicon)

    def load_prompts(self, run: TrainedRun) -> Prompts:
        """(example, reference answer or None) pairs: ad-hoc questions, --data, or the eval split.
        Prompts the adapter was trained on are left out (ad-hoc ones flagged): a verdict on them
        measures recall, not what the fine-tune does for new questions."""
        c = self.config
        seen = read_prompt_digests(c.adapter)  # None: a run trained before it recorded them
        if c.prompt:
            items = [(Example(q, "", 0), None) for q in c.prompt]
            flagged = [i for i, (ex, _) in enumerate(items, 1) if seen is not None and prompt_digest(ex) in seen]
            return Prompts(items, "--prompt",
                           overlap_fact(c.adapter, seen, len(flagged), len(c.prompt), "kept but flagged"),
                           [f"--prompt {i} ({c.prompt[i - 1][:30]}) was seen in training: its answers are not "
                            "held-out" for i in flagged])
        path = c.data or c.adapter / run.record.resolved.eval_file
        if c.data is None and path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path}: no prompts to compare, the eval split is empty. Train with --eval-ratio > "
                            "0, or pass --data FILE or --prompt QUESTION")
        examples = read_dataset(path).examples  # DataError for a file with no usable example
        held_out = [ex for ex in examples if seen is None or prompt_digest(ex) not in seen]
        if not held_out:
            raise DataError(f"{path}: all {len(examples)} prompts were seen in training, so a verdict on them "
                            "says nothing about new questions; compare on held-out prompts: the run's eval "
                            "split (drop --data) or a file of questions it was not trained on")
        items = [(ex, ex.answer) for ex in held_out][: c.num_samples or None]
        if run.prompt_format == "glm3" and any(ex.conversational for ex, _ in items):
            raise DataError(f"{path} holds conversations, and this adapter was trained on the glm3 layout, "
                            "which has none; compare it on question/answer data")
        return Prompts(items, str(path),
                       overlap_fact(c.adapter, seen, len(examples) - len(held_out), len(examples), "left out"), [])

    def load_exam(self) -> Exam | None:
        """The knowledge check's questions (--benchmark; a hub name fetched into the cache), every file
        read whole before any model loads; None without one."""
        from .knowledge import read_exam

        c = self.config
        return read_exam(c.benchmark, c.benchmark_shots, c.benchmark_questions)

    def load_model(self, run: TrainedRun, prompts: Prompts, exam: Exam | None) -> Loaded:
        """The tokenizer saved with the adapter; how to hold the weights and decode (from the free
        memory and the work); the report's folder, reserved; the model."""
        from .generation import Decoding
        from .inference import Sides, cache_length, plan_compile, plan_weights
        from .knowledge import encode_exam
        from ..model.lora import adapter_parameters
        from ..model.placement import Shape
        from ..model.prompts import encode, example_prompt_ids
        from ..model.tokenizer import load_tokenizer

        c, items = self.config, prompts.items
        tokenizer = load_tokenizer(c.adapter)
        ids = [example_prompt_ids(tokenizer, ex, run.prompt_format) for ex, _ in items]
        width = max(map(len, ids))
        room = room_for_prompts(tokenizer.model_max_length, c.max_new_tokens, min(map(len, ids)))
        if width > room:
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            raise DataError(f"prompt {longest + 1} ({items[longest][0].question[:30]}...) is {width} tokens; with "
                            f"--max-new-tokens {c.max_new_tokens} the context ({tokenizer.model_max_length}) has "
                            f"room for {room}. Shorten it, or lower --max-new-tokens")
        exam_ids = None if exam is None else encode_exam(tokenizer, exam, run.prompt_format)
        cache_len = cache_length(width, c.max_new_tokens)
        scored = {} if c.no_perplexity else {
            i: encode(tokenizer, ex, run.prompt_format, run.record.config.max_length)
            for i, (ex, reference) in enumerate(items) if reference is not None}
        scored_len = max((len(row.input_ids) for row in scored.values()), default=0)
        mine = distributed.share(len(ids))
        free = min(distributed.gather(device.free_memory()))  # the fullest GPU's

        def plan():  # rank 0 decides for all, so that every process holds the weights and decodes alike
            weights = plan_weights(c.quantization, run.record.config.quantization, Shape.of_model(run.base),
                                   free, len(mine), width, cache_len, c.batch_size, device.cuda(), scored_len,
                                   adapter_parameters(c.adapter))
            compiling = plan_compile(c.compile, weights, len(mine), c.max_new_tokens, cache_len, run.base,
                                     device.cuda())
            return weights, compiling, self._reserve_output()  # after every check, before any model

        weights, compiling, self.output = distributed.on_main(plan)
        decoding = Decoding(c.max_new_tokens, c.do_sample, c.temperature, c.top_p, c.seed, cache_len, compiling.on)
        return Loaded(tokenizer, ids, scored, mine, weights, compiling, decoding,
                      Sides.load(run.base, c.adapter, weights), exam_ids)

    def generate(self, loaded: Loaded, exam: Exam | None) -> Answers:
        """Both sides' answers (and reference perplexities, and the exam's answers), each timed on its
        own; the base side first, then the fine-tuned side (merging the adapter, where the weights are
        16-bit)."""
        from .generation import warm_up
        from .knowledge import answer_exam
        from ..training.compiling import record_compile_cost

        def take_exam(model) -> SideExam | None:
            if exam is None:
                return None
            return answer_exam(model, loaded.exam, exam, loaded.weights.exam_tokens, loaded.tokenizer)

        with loaded.sides.base_side() as model:
            load_s = time.perf_counter() - self.began
            mine = [loaded.ids[i] for i in loaded.mine]
            warm_up_s = max(distributed.gather(warm_up(model, loaded.tokenizer, mine, loaded.decoding,
                                                       loaded.weights.batch_size)))
            if loaded.compiling.on and distributed.is_main():
                record_compile_cost(loaded.compiling.key, warm_up_s)
            base = answer_side(model, "base", loaded)
            base_exam = take_exam(model)
        began = time.perf_counter()
        model = loaded.sides.tuned_side()
        merge_s = time.perf_counter() - began
        tuned = answer_side(model, "tuned", loaded)
        exams = None if exam is None else Both(base_exam, take_exam(model))
        return Answers(base, tuned, load_s, warm_up_s, merge_s, exams)

    def score(self, run: TrainedRun, prompts: Prompts, loaded: Loaded, answers: Answers, exam: Exam | None) -> Report:
        """Both sides scored, with the timing and settings: the whole report, not yet written."""
        from .knowledge import summarize
        from .scoring import Sample, score

        c = self.config
        scoring = time.perf_counter()
        samples = [Sample(ex.question, reference, {"base": answers.base.answers[i], "tuned": answers.tuned.answers[i]},
                          {"base": answers.base.ppl[i], "tuned": answers.tuned.ppl[i]}, ex.department)
                   for i, (ex, reference) in enumerate(prompts.items)]
        knowledge = None if answers.exam is None else \
            summarize(exam, run.prompt_format, answers.exam.base, answers.exam.tuned)
        rows, aggregate = score(samples, run.lexicon, one_per_batch=loaded.weights.batch_size == 1,
                                knowledge=knowledge)
        timing = Timing(answers.base.timing, answers.tuned.timing, answers.load_s, answers.warm_up_s,
                        loaded.compiling.on, answers.merge_s, loaded.weights.describe(), loaded.compiling.reason,
                        time.perf_counter() - scoring)
        settings = Settings(
            adapter=str(c.adapter), base_model=run.base, weights=loaded.weights.describe(),
            compile=loaded.compiling.reason, prompt_format=run.prompt_format, prompts=len(prompts.items),
            prompt_source=prompts.source, decoding="sampling" if c.do_sample else "greedy",
            max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, seed=c.seed, terms_file=str(run.terms_file),
            device=device.name(), processes=distributed.world_size(), seen_in_training=prompts.overlap,
            benchmark=benchmark_setting(c))
        return Report(settings, aggregate, timing, rows, prompts.notes)

    def write(self, report: Report, summary: list[str]) -> None:
        """The log (opening with `summary`), the JSON report, the chart and the HTML report, each
        written whole or not at all (by rank 0, which speaks for all processes)."""
        self.outputs = [self.output / f"{STEM}.{ext}" for ext in ("log", "json", "png", "html")]
        distributed.on_main(lambda: self._write(report, summary))

    def _reserve_output(self) -> Path:
        self.output, self.scratch, held = output_dir(self.config)
        self.claims.append(held)
        if self.config.overwrite and self.output.is_dir() and any(map(is_report_file, self.output.iterdir())):
            # held until the new report replaces it: no ratings are folded into the report on its way out
            self.claims.append(claim(self.output, "comparing (replacing its report)"))
        return self.output

    def _write(self, report: Report, summary: list[str]) -> None:
        """Into the scratch folder, then published in one rename: a report folder never holds one
        comparison's log beside another's chart."""
        from .html_report import write_html
        from .plots import plot_aggregate
        from .scoring import write_log, write_report

        log, json_report, chart, html = (self.scratch / p.name for p in self.outputs)
        write_log(log, report, summary, self.config.examples)
        write_report(json_report, report)
        plot_aggregate(chart, report.aggregate)
        write_html(html, report, chart)
        # A file a user put there while the models ran: the next free name instead, nothing of theirs touched.
        if not replaceable(self.output, is_report_file, self.config.overwrite):
            changed = self.output
            self.output = next(f for f in numbered(report_folder(self.config))
                               if free(f) and not scratch_for(f).exists())
            self.outputs = [self.output / p.name for p in self.outputs]
            print(f"{changed} gained files while the comparison ran; the report goes to {self.output} instead")
        publish(self.scratch, self.output, last=json_report.name)

    def closing_lines(self, timing: Timing) -> list[str]:
        warm = "compile and warm-up" if timing.compiled else "warm-up"
        return [f"total {time.perf_counter() - self.began:.1f} s: loading {timing.load_s:.1f} s, {warm} "
                f"{timing.warm_up_s:.1f} s, scoring {timing.score_s:.1f} s",
                f"wrote {self.output}/: {', '.join(p.name for p in self.outputs)}",
                f"open   {self.outputs[-1]} in a browser for every answer side by side"]


def answer_side(model, side: str, loaded: Loaded) -> SideAnswers:
    """One side's answers and perplexities, in item order. With several processes each runs its
    own share of the prompts, and every process ends with all of them."""
    from .generation import generate_answers, reference_perplexity

    device.reset_peak()
    began = time.perf_counter()
    answers = generate_answers(model, loaded.tokenizer, [loaded.ids[i] for i in loaded.mine], loaded.decoding,
                               loaded.weights.batch_size, desc=side)
    wall = time.perf_counter() - began
    scored = [i for i in loaded.mine if i in loaded.scored]
    values = reference_perplexity(model, [loaded.scored[i] for i in scored], loaded.tokenizer.pad_token_id,
                                  loaded.weights.perplexity_batch, loaded.weights.perplexity_chunk)
    shares = distributed.gather((list(loaded.mine), answers, dict(zip(scored, values)), wall, device.peak_gib()))
    every: list = [None] * len(loaded.ids)
    ppl: list = [None] * len(loaded.ids)
    for indices, part, perplexities, _, _ in shares:
        for i, answer in zip(indices, part):
            every[i] = answer
        for i, value in perplexities.items():
            ppl[i] = value
    wall = max(share[3] for share in shares)  # the processes decode at the same time
    new_tokens = sum(a.new_tokens for a in every)
    return SideAnswers(every, ppl, SideTiming(wall, new_tokens, new_tokens / wall if wall else 0.0,
                                              max(share[4] for share in shares) if device.cuda() else None))


def benchmark_setting(config: CompareConfig) -> str:
    """The knowledge check's sources and how they were asked, as the settings record them."""
    if not config.benchmark:
        return NO_BENCHMARK_SETTING
    if config.benchmark == ["none"]:
        return "none (--benchmark none)"
    per_subject = f", the first {config.benchmark_questions} per subject" if config.benchmark_questions else ""
    return f"{', '.join(config.benchmark)}; {config.benchmark_shots}-shot{per_subject}"


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
    """The medical-term lexicon; a bad file is a DataError naming its line. Read once per process
    while the file is unchanged: building its jieba dictionary takes most of a second, which a
    library caller comparing run after run would otherwise pay each time."""
    try:
        stat = path.stat()
        return _lexicon(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give a term list, one term per line") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the term list as UTF-8, one term per line") from None
    except ValueError as err:  # Lexicon.load names the file and line
        raise DataError(f"{err}; fix the term list (one term per line, '#' for comments)") from None


@functools.lru_cache(maxsize=4)
def _lexicon(path: str, mtime_ns: int, size: int):
    """The lexicon in `path` as it was at (mtime_ns, size): a changed file is read again."""
    from .metrics import Lexicon

    return Lexicon.load(Path(path))


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
                                        f"({few(theirs)}); --overwrite replaces only "
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


def reviewed_report(config: CompareConfig) -> Path:
    """The report folder the ratings belong to: --output, or the one of ADAPTER/comparison,
    comparison-2, ... whose report id the first ratings file names."""
    import json

    if config.output is not None:
        return place(config.output)
    try:
        wanted = json.loads(config.ratings[0].read_text(encoding="utf-8")).get("report")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        wanted = None  # read_ratings says what is wrong with the file
    # comparison, comparison-2, ... in their order, gaps (a report the user deleted) included
    reports = [p for p in config.adapter.glob("comparison*/" + f"{STEM}.json")
               if re.fullmatch(r"comparison(-\d+)?", p.parent.name)]
    looked = []
    for report in sorted(reports, key=lambda p: int(p.parent.name.partition("-")[2] or 1)):
        folder = report.parent
        looked.append(folder)
        try:
            if json.loads(report.read_text(encoding="utf-8"))["settings"].get("report_id") == wanted:
                return folder
        except (OSError, UnicodeDecodeError, ValueError, KeyError):
            continue
    if not looked:
        raise DataError(f"{config.adapter} has no comparison report to fold ratings into; run glmtune compare --adapter "
                        f"{config.adapter} first, or pass --output REPORT_FOLDER")
    raise DataError(f"{config.ratings[0]}: these ratings are for a report that is not in {few(looked)}; pass the "
                    "report's folder with --output")


def fold_ratings(config: CompareConfig, show: Callable[[list[str]], None]) -> Report:
    """--ratings: reviewers' ratings folded into a finished comparison's verdict, no model loaded; its
    log, JSON and HTML rewritten in place, each atomically, the JSON (which keeps every rating) last."""
    import json

    from .html_report import write_html
    from .review import fold
    from .scoring import rejudge, report_summary, write_log, write_report

    folder = reviewed_report(config)
    json_report = folder / f"{STEM}.json"
    if not json_report.is_file():
        raise DataError(f"{folder}: no {json_report.name}; pass the folder of a comparison report with --output")
    held = claim(folder, "folding ratings into the report")
    try:
        try:
            data = json.loads(json_report.read_text(encoding="utf-8"))
            if "report_id" not in data["settings"]:
                raise DataError(f"{json_report}: written before reports had a blind review; run the comparison "
                                "again")
            report = Report.from_json(data)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{json_report}: not a report this version of glmtune can read ({type(err).__name__}: "
                            f"{err}); run the comparison again") from None
        report = rejudge(report, fold(report, config.ratings))
        summary = report_summary(report)
        write_log(folder / f"{STEM}.log", report, summary, config.examples)
        write_html(folder / f"{STEM}.html", report, folder / f"{STEM}.png")
        write_report(json_report, report)
    finally:
        held.abandon()  # the lock file goes too: the folder holds the report's files alone again
    show([*summary, f"updated {folder}/: {STEM}.log, {STEM}.json, {STEM}.html"])
    return report


def comparison(config: CompareConfig, show: Callable[[list[str]], None]) -> Compared | None:
    """Every stage of a comparison, in order; `show` gets what the command prints, as it is known.
    With --chat, a conversation after the first stage instead (None); with --ratings, the ratings
    folded into an earlier report instead (None), no model loaded."""
    from .scoring import report_summary, side_by_side

    if config.ratings:
        fold_ratings(config, show)
        return None
    device.select(config.device)
    device.limit_memory(config.gpu_memory)  # also maps a small card's memory in expandable segments
    with Comparison(config) as job:  # on leaving: the run folder free again, no half-written report
        run = job.load_run()  # the training run: base model, quantization, prompt layout
        if config.chat:
            from .chat import start, talk

            talk(start(config, run.record, run.base, sys.stdout), sys.stdin)
            return None
        prompts = job.load_prompts(run)  # --prompt, --data, or the eval split held out at training time
        exam = job.load_exam()  # --benchmark: the knowledge check's questions
        try:
            loaded = job.load_model(run, prompts, exam)
            show(loaded.lines())
            answers = job.generate(loaded, exam)  # base side, then fine-tuned: answers, perplexities, exam answers
        except torch.OutOfMemoryError:  # the plan's estimates fell short on this card
            raise ModelLoadError(f"the GPU ran out of memory ({device.total_memory() / 2**30:.1f} GiB); rerun with "
                                 "--batch-size 1 and a lower --max-new-tokens, free the GPU of other processes, or "
                                 "use --device cpu") from None
        report = job.score(run, prompts, loaded, answers, exam)
        summary = report_summary(report)
        try:
            job.write(report, summary)  # published whole, before printing can fail
        finally:  # then on screen, also when the write failed (a full disk), before its error
            if config.prompt:  # ad-hoc questions have no reference: their answers are the result
                show(side_by_side(report.rows, shutil.get_terminal_size().columns))
            show(summary)
    show(job.closing_lines(report.timing))
    return Compared(run, prompts, exam, loaded, answers, report, summary, job.output, job.outputs)


def compare(config: CompareConfig) -> Compared | None:
    """A comparison from Python (`glmtune.compare`): what `main` does, without printing, save the
    note that a file put in the reserved folder sent the report to the next free one."""
    return comparison(config, lambda lines: None)


def main(config: CompareConfig) -> None:
    """The comparison command (`chatglm_finetuning_tst.py`, `glmtune compare`, `glmtune chat`)."""
    comparison(config, lambda lines: print("\n".join(lines), flush=True))
