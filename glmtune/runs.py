"""The output folder of a training run: `run_config.json` and its guard against overwriting.

`run_config.json` holds every resolved setting, library versions and the data file's hash, so the
comparison script (and a person, months later) knows exactly what produced an adapter.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from importlib import metadata
from pathlib import Path

RUN_CONFIG = "run_config.json"
# Settings that do not change what a run computes, so they do not make it "a different run".
NOT_IDENTITY = {"output_dir", "resume", "overwrite"}
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers")


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


def prepare_output_dir(output_dir: Path, settings: dict, resume: bool, overwrite: bool) -> None:
    """Create the folder; refuse to mix a different run into it unless told to overwrite."""
    previous = output_dir / RUN_CONFIG
    if output_dir.exists() and any(output_dir.iterdir()):
        old = json.loads(previous.read_text(encoding="utf-8"))["settings"] if previous.is_file() else None
        same = old is not None and _identity(old) == _identity(settings)
        if overwrite:
            shutil.rmtree(output_dir)
        elif resume and not same:
            raise SystemExit(
                f"error: --resume: {output_dir} holds a run with different settings "
                f"({_difference(old, settings)}). Resume with the original flags, or drop --resume."
            )
        elif not resume and not same:
            what = "files that are not a run of this tool" if old is None else _difference(old, settings)
            raise SystemExit(
                f"error: {output_dir} already holds {what}. "
                "Pick another --output-dir, or pass --overwrite to replace it."
            )
    output_dir.mkdir(parents=True, exist_ok=True)


def _identity(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in NOT_IDENTITY}


def _difference(old: dict | None, new: dict) -> str:
    if old is None:
        return "no run_config.json"
    keys = sorted(k for k in set(old) | set(new) if k not in NOT_IDENTITY and old.get(k) != new.get(k))
    return "different " + ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys[:4])


def write_run_config(output_dir: Path, settings: dict, resolved: dict) -> None:
    payload = {"settings": settings, "resolved": resolved, "versions": library_versions()}
    (output_dir / RUN_CONFIG).write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")


def read_run_config(adapter_dir: Path) -> dict:
    path = adapter_dir / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir}: no {RUN_CONFIG}. Pass the --output-dir of a chatglm_finetuning.py run."
        )
    return json.loads(path.read_text(encoding="utf-8"))
