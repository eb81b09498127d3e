"""The output folder of a training run: its record (`run_config.json`), its checkpoints, and the
rules that keep one run from overwriting or silently restarting another.

`run_config.json` is written first, before any other output, and rewritten atomically as the run
learns more (the batch it fitted, the eval file) and when it finishes. It holds every setting, the
data file's hash, library versions and the run's state, so the comparison script (and a person,
months later) knows exactly what produced an adapter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..core.config import PROMPT_FORMATS, TrainConfig, resolve_lora_targets
from ..core.errors import RunDirError, few
from ..core.files import write_atomic
from ..core.folders import ASIDE, delete, is_own_scratch, remove
from ..core.terminal import command
from ..data.reading import TRAIN_PROMPTS

RUN_CONFIG = "run_config.json"
RUNNING, FINISHED = "running", "finished"
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
IDENTITY = "glmtune_run.json"  # in each checkpoint: which run wrote it
DAMAGED = ".damaged-"  # a damaged checkpoint set aside, kept for the user to look at
# files.write_atomic's, FineTune.save's and --overwrite's (folders.delete's) scratch names
SCRATCH = re.compile(rf"^(\..+\.tmp|\.saving-.*|{re.escape(ASIDE)}.*)$")
# What the Trainer, peft and this tool write into a checkpoint: a folder of that name holding anything
# else is a user's. (peft's model card README.md is no longer written, but earlier runs' checkpoints hold one.)
CHECKPOINT_FILES = re.compile(r"^(adapter_model\.safetensors|adapter_config\.json|README\.md|optimizer\.pt|"
                              r"scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|trainer_state\.json|training_args\.bin|"
                              r"glmtune_run\.json|tokenizer.*|special_tokens_map\.json|chat_template\.jinja|\..+\.tmp)$")
# What a run of this tool writes: --overwrite replaces a folder only if it holds nothing else.
OUR_FILES = {RUN_CONFIG, "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "eval.txt", "eval.jsonl",
             "train_metrics.json", "loss.png", "data_report.txt", "skipped_lines.txt", "runs", TRAIN_PROMPTS}
REPORTS = re.compile(r"^comparison(-\d+)?$")  # the comparison script's report folders inside a run
REPORT_STEM = "chatglm_comparison"  # a report's files: STEM.log, .json, .png, .html
REPORT_FILES = {f"{REPORT_STEM}.{ext}" for ext in ("log", "json", "png", "html")}


def is_report_file(path: Path) -> bool:
    return path.name in REPORT_FILES and path.is_file()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class Resolved:
    """What the run decided from its settings, the data and the machine."""

    prompt_format: str = ""
    eval_file: str = ""  # in the run folder: eval.txt (seed format) or eval.jsonl (conversations)
    precision: str = ""
    lora_targets: list[str] = field(default_factory=list)
    micro_batch: int = 0  # per process
    grad_accum: int = 0
    processes: int = 1  # data-parallel processes (GPUs), each taking its own micro-batches
    effective_batch: int = 0  # micro_batch x grad_accum x processes: rows per optimizer step
    checkpointing: str = ""
    compile: str = ""
    examples: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)


@dataclass
class RunRecord:
    config: TrainConfig
    data_sha256: str
    state: str = RUNNING
    resolved: Resolved = field(default_factory=Resolved)
    config_file: str | None = None
    versions: dict = field(default_factory=library_versions)
    files: list[str] = field(default_factory=list)  # what the run wrote in its folder: all --overwrite deletes
    digests: dict = field(default_factory=dict)  # SHA-256 of each file written whole: a file changed since is kept

    def seal(self, folder: Path) -> None:
        """Record what each listed file holds now (the run's final state), so that --overwrite later
        keeps one a user has edited since (notes added to data_report.txt, say)."""
        self.digests = {name: file_sha256(folder / name) for name in sorted(set(self.files))
                        if name != RUN_CONFIG and (folder / name).is_file() and not (folder / name).is_symlink()}

    def identity(self) -> dict:
        """What makes two runs the same run: the settings that change the weights, and the data."""
        settings = self.config.to_dict()
        return {**{k: settings[k] for k in TrainConfig.identity_fields()}, "data_sha256": self.data_sha256}

    def save(self, folder: Path) -> None:
        payload = {"state": self.state, "settings": self.config.to_dict(), "data_sha256": self.data_sha256,
                   "config_file": self.config_file, "resolved": dataclasses.asdict(self.resolved),
                   "versions": self.versions, "files": sorted(set(self.files)), "digests": self.digests}
        write_atomic(folder / RUN_CONFIG, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        """The record of the run in `folder`; RunDirError if it is missing or unreadable."""
        path = folder / RUN_CONFIG
        if not path.is_file():
            raise RunDirError(f"{folder}: no {RUN_CONFIG}; this is not the output folder of a training run")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            resolved_fields = {f.name for f in dataclasses.fields(Resolved)}
            resolved = Resolved(**{k: v for k, v in raw.get("resolved", {}).items() if k in resolved_fields})
            if "model" not in raw["settings"]:
                raise KeyError("settings.model")
            config = TrainConfig.from_dict(raw["settings"])
            config.check_values()
            sha = raw.get("data_sha256") or raw.get("resolved", {}).get("data_sha256", "")
            # Records older than the resolved block: "auto" was glm3 unless the data had conversations.
            fallback = config.prompt_format if config.prompt_format != "auto" else "glm3"
            resolved.prompt_format = resolved.prompt_format or fallback
            resolved.eval_file = resolved.eval_file or "eval.txt"
            if resolved.prompt_format not in PROMPT_FORMATS or not isinstance(resolved.eval_file, str):
                raise ValueError(f"resolved prompt_format {resolved.prompt_format!r} / eval_file "
                                 f"{resolved.eval_file!r} are not what a run writes")
            files = raw.get("files", sorted(OUR_FILES))  # older records list none: the names this tool writes
            if not isinstance(files, list) or not all(isinstance(n, str) for n in files):
                raise ValueError(f"files {files!r} is not a list of names")
            if raw.get("state", FINISHED) not in (RUNNING, FINISHED):
                raise ValueError(f"state {raw['state']!r} is neither {RUNNING!r} nor {FINISHED!r}")
            digests = raw.get("digests", {})
            if not isinstance(digests, dict):
                raise ValueError(f"digests {digests!r} is not a mapping of names to hashes")
            return cls(config, sha, raw.get("state", FINISHED), resolved, raw.get("config_file"),
                       raw.get("versions", {}), files, digests)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RunDirError(f"{path} is damaged ({type(err).__name__}: {err}); it cannot say which run this "
                              "folder holds. Train again into a new --output-dir, or with --overwrite") from None


def checkpoints(folder: Path) -> list[Path]:
    """The checkpoint-N folders of a run, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def trainer_state(checkpoint: Path) -> dict | None:
    """trainer_state.json, which the Trainer writes last; None where it is missing or cut short."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


def is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer can resume from `checkpoint`: its state written whole (a kill or a full
    disk cuts that short), and its files readable (a torch file that is no longer a whole zip
    archive, or an unreadable adapter, was damaged since)."""
    from safetensors import SafetensorError, safe_open

    if not checkpoint.is_dir() or trainer_state(checkpoint) is None:
        return False
    try:
        with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt"):
            pass
    except (FileNotFoundError, SafetensorError):
        return False
    return all(zipfile.is_zipfile(p) for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth"))


def clear_leftovers(folder: Path) -> list[str]:
    """Before a run continues in `folder`: remove what kills and full disks left behind (scratch
    files; checkpoints cut short, which the Trainer would also write into) and set aside, not
    delete, a checkpoint that was written whole and damaged since. Says what it did, for the user."""
    done = []
    for item in sorted(folder.iterdir()):
        if SCRATCH.match(item.name):
            remove(item)
            done.append(f"removed {item.name} (scratch)")
        elif CHECKPOINT.match(item.name) and not is_complete(item):
            if not _checkpoint_like(item):
                raise RunDirError(f"{item} is not a checkpoint of this tool's (it holds other files, or is a file), "
                                  "and the run saves its checkpoints under that name; move it out of the run folder")
            if item.is_dir() and not item.is_symlink() and trainer_state(item) is not None:
                aside = folder / f"{DAMAGED}{item.name}"
                number = 1
                while aside.exists():
                    number += 1
                    aside = folder / f"{DAMAGED}{item.name}-{number}"
                item.rename(aside)
                done.append(f"set {item.name} aside as {aside.name} (a file in it is damaged)")
            else:
                remove(item)
                done.append(f"removed {item.name} (cut short)")
    return done


def _checkpoint_like(item: Path) -> bool:
    """Whether a checkpoint-N entry can be the Trainer's: a link (removing it removes no data), or
    a folder of nothing but the files a checkpoint holds (however few, when cut short)."""
    if item.is_symlink():
        return True
    return item.is_dir() and all(p.is_file() and CHECKPOINT_FILES.match(p.name) for p in item.iterdir())


def last_checkpoint(folder: Path) -> Path | None:
    return next((c for c in checkpoints(folder) if is_complete(c)), None)


def _difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" if k != "data_sha256" else "the data file's contents changed"
             for k in keys[:4]]
    return ", ".join(shown)


def owned_entries(folder: Path, old: RunRecord | None) -> tuple[list[Path], list[Path]]:
    """(what the run of record `old` wrote in `folder`, everything else). What a run wrote is what
    its record lists, unless changed since (its digest differs), its checkpoints (unless stamped by
    another run, or holding a file no checkpoint holds), its scratch, and its comparison report
    folders holding nothing but report files. With no readable record: the names this tool writes."""
    listed = set(old.files) if old is not None else OUR_FILES
    digests = old.digests if old is not None else {}
    ours, foreign = [], []
    for item in sorted(folder.iterdir()):
        own_scratch = SCRATCH.match(item.name) or item.name.startswith(f"{DAMAGED}checkpoint-")
        if item.name.startswith(".") and not own_scratch:
            continue  # hidden files (the lock too) are never the tool's to delete, beyond its own scratch
        if item.is_symlink() or own_scratch:
            mine = True  # a link is unlinked, never what it points to
        elif item.name in listed:
            mine = _unchanged(item, digests.get(item.name))
        elif CHECKPOINT.match(item.name):
            mine = _checkpoint_like(item) and _stamped_by(item, old)
        elif REPORTS.match(item.name) and item.is_dir():
            mine = all(map(is_report_file, item.iterdir()))
        else:
            mine = False
        (ours if mine else foreign).append(item)
    return ours, foreign


def _unchanged(item: Path, digest: str | None) -> bool:
    """Whether a listed entry is still what the run wrote: a file with its recorded digest (none is
    recorded for a run killed before it finished), or TensorBoard's folder of event files alone
    (the only folder a run lists)."""
    if item.is_dir():
        return item.name == "runs" and all("tfevents" in p.name for p in item.rglob("*") if not p.is_dir())
    try:
        return digest is None or file_sha256(item) == digest
    except OSError:  # cannot be read, so cannot be told unchanged: the user's
        return False


def _stamped_by(checkpoint: Path, old: RunRecord | None) -> bool:
    """Whether `checkpoint` bears no stamp of another run than `old`'s."""
    try:
        stamped = json.loads((checkpoint / IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return old is None or stamped == old.identity()


def _replace(record: RunRecord, old: RunRecord | None) -> list[str]:
    """--overwrite: delete what the earlier run wrote, nothing else; says what it deleted and kept.
    Refused, before anything is deleted, where that would take the data file being trained on, or
    where a file the tool did not write (or one changed since) stands where the new run writes."""
    out, data = record.config.output_dir, record.config.data.resolve()
    ours, foreign = owned_entries(out, old)
    # A link is unlinked, not followed: the data behind one is safe.
    doomed = [p for p in ours if not p.is_symlink() and (data == p.resolve() or p.resolve() in data.parents)]
    if doomed:
        raise RunDirError(f"--overwrite would delete {doomed[0]}, and --data {record.config.data} is (in) it. Move "
                          "the data file out of the run folder first, or choose another --output-dir")
    in_the_way = [p for p in foreign if p.name in OUR_FILES or CHECKPOINT.match(p.name)]
    if in_the_way:
        raise RunDirError(f"{out} holds {few(in_the_way)}, which this tool did not write (or which changed since) "
                          "and the new run would write over. Move them out, or choose another --output-dir")
    # The record stays until the new run's replaces it: a kill meanwhile leaves a folder that is
    # still a run's, which --overwrite can finish replacing (its scratch included).
    left = delete(out, [p for p in ours if p.name != RUN_CONFIG], "--output-dir")
    done = [f"deleted the earlier run's {few(ours)}", *left] if ours else []
    return done + ([f"kept {few(foreign)} (not written by this tool)"] if foreign else [])


def prepare_output_dir(record: RunRecord) -> tuple[Path | None, list[str]]:
    """Make the output folder (claimed by this process) ready for `record`'s run. Returns the
    checkpoint to resume from (None: start at step 0) and what was done to the folder, for the
    user. Refuses, with what to do, anything that would mix or lose runs or a user's files."""
    config = record.config
    out = config.output_dir
    # A kill during an atomic write leaves its scratch file; alone, it does not make a folder a run's.
    entries = sorted(p.name for p in out.iterdir() if not SCRATCH.match(p.name) and not is_own_scratch(p.name))
    if not entries:
        if config.resume:
            raise RunDirError(f"nothing to resume: {out} holds no run. Drop --resume to start one")
        return None, []
    has_record = (out / RUN_CONFIG).is_file()
    old = RunRecord.load(out) if has_record and not config.overwrite else None
    if config.overwrite:
        if not has_record:  # the record is written first: without one, nothing is ours
            raise RunDirError(f"{out} holds files that are not a run of this tool ({few(entries)}); --overwrite "
                              "replaces only runs of this tool. Choose another --output-dir")
        return None, _replace(record, _readable_record(out) if has_record else None)
    if old is None:
        raise RunDirError(f"{out} already holds files that are not a run of this tool ({few(entries)}). "
                          "Choose another --output-dir")
    reports = [n for n in entries if REPORTS.match(n)]
    lost = f" (and its comparison reports {', '.join(reports)})" if reports else ""
    if old.identity() != record.identity():
        difference = _difference(old.identity(), record.identity())
        if old.state != FINISHED and not checkpoints(out) and not config.resume:
            # Stopped (or refused) before its first checkpoint: nothing of it can be continued.
            return None, [f"replaced a run that stopped before its first checkpoint ({difference})",
                          *_replace(record, old)]
        if config.resume:
            raise RunDirError(f"cannot resume: {out} holds a run with other settings ({difference}). Resume with "
                              "the original settings, or drop --resume")
        raise RunDirError(f"{out} already holds another run ({difference}). Choose another --output-dir, or pass "
                          f"--overwrite to replace it{lost}")
    if old.state == FINISHED:
        raise RunDirError(f"{out} holds this run, finished. Compare it: "
                          f"{command('glmtune', 'compare', '--adapter', out)}; "
                          f"or train it again with --overwrite, which replaces it{lost}")
    record.files = old.files
    if config.resume not in (None, "last"):
        chosen = Path(config.resume)
        if (chosen / RUN_CONFIG).is_file():
            raise RunDirError(f"{chosen} is a run folder, not a checkpoint: --resume alone continues this run's last "
                              "checkpoint; --resume PATH takes one of its checkpoint-N folders")
        if not is_complete(chosen):
            raise RunDirError(f"{chosen} is not a complete checkpoint (cut short, or damaged); "
                              "pass another, or --resume alone for the last complete one")
        check_belongs(chosen, record)
        return chosen, []
    last = last_checkpoint(out)
    if config.resume:
        if last is not None:
            check_belongs(last, record)
        return last, []  # None: killed before its first checkpoint, so step 0 is where it stands
    if last is not None:
        raise RunDirError(f"{out} holds this run, interrupted at {last.name}. Continue it with --resume, or start "
                          "over with --overwrite")
    return None, []  # interrupted before its first checkpoint: nothing to lose by starting again


def _readable_record(folder: Path) -> RunRecord | None:
    """The record in `folder`, or None where it is too damaged to say what the run wrote."""
    try:
        return RunRecord.load(folder)
    except RunDirError:
        return None


def stamp(checkpoint: Path, record: RunRecord) -> None:
    write_atomic(checkpoint / IDENTITY, json.dumps(record.identity(), indent=2, ensure_ascii=False) + "\n")


def check_belongs(checkpoint: Path, record: RunRecord) -> None:
    """RunDirError unless `checkpoint` was written by `record`'s run: its stamp says the same
    settings and data, or, unstamped (older runs), it lies in the run's own folder."""
    try:
        stamped = json.loads((checkpoint / IDENTITY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if checkpoint.resolve().parent != record.config.output_dir.resolve():
            raise RunDirError(f"{checkpoint} is not in {record.config.output_dir} and does not say which run wrote "
                              "it; resume from a checkpoint of this run (--resume alone takes its last one)") from None
        _check_lora_shape(checkpoint, record.config)  # unstamped (older runs): what can be told without a stamp
        return
    except (OSError, ValueError) as err:
        raise RunDirError(f"{checkpoint / IDENTITY} is damaged ({err}); resume from another checkpoint") from None
    if not isinstance(stamped, dict):
        raise RunDirError(f"{checkpoint / IDENTITY} is damaged (not a JSON object); resume from another checkpoint")
    if stamped != record.identity():
        raise RunDirError(f"{checkpoint} is a checkpoint of another run ({_difference(stamped, record.identity())}); "
                          "resume from a checkpoint of this run (--resume alone takes its last one)")


def _check_lora_shape(checkpoint: Path, config: TrainConfig) -> None:
    """The adapter in an unstamped checkpoint has this run's LoRA rank, alpha and target modules
    (another's would fail to load, or train on under this run's name)."""
    try:
        saved = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
        shape = (saved["r"], saved["lora_alpha"], sorted(saved["target_modules"]))
    except (OSError, ValueError, KeyError, TypeError):
        return  # is_complete has read the adapter itself; its config is peft's to judge
    ours = (config.lora_r, config.lora_alpha, sorted(resolve_lora_targets(config.lora_target)))
    differences = [f"{what} {theirs} (this run: {mine})".replace("'", "")
                   for what, theirs, mine in zip(("rank", "alpha", "modules"), shape, ours) if theirs != mine]
    if differences:
        raise RunDirError(f"{checkpoint} holds another run's adapter ({'; '.join(differences)}). Resume from a "
                          "checkpoint of this run (--resume alone takes its last one)")
