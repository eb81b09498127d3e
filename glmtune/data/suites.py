"""The known exam suites by name (`--benchmark cmmlu`, `ceval`, `cmb`): their files fetched once from
the Hugging Face hub with huggingface_hub into the cache, and read from there afterwards. The
datasets library's loading scripts for these suites no longer run (datasets 4 dropped scripts), so
the files are fetched as they are stored:
- CMMLU: haonan-li/cmmlu's cmmlu_v1_0_1.zip (dev/ and test/ of 67 subjects, 11,582 test questions);
- C-Eval: ceval/ceval-exam's ceval-exam.zip (dev/, val/, test/ of 52 subjects; val is scored where
  test has no answers);
- CMB: FreedomIntelligence/CMB's CMB-val-merge.json (280 questions with answers; its test split's
  answers are not on the hub).
Set HF_ENDPOINT to use a mirror (https://hf-mirror.com)."""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.config import BENCHMARK_SUITES
from ..core.errors import DataError
from ..core.files import cache_root


@dataclass(frozen=True)
class Suite:
    repo: str
    file: str  # in the hub repo: a zip unpacked into the cache, or the benchmark file itself


SUITES = {
    "cmmlu": Suite("haonan-li/cmmlu", "cmmlu_v1_0_1.zip"),
    "ceval": Suite("ceval/ceval-exam", "ceval-exam.zip"),
    "cmb": Suite("FreedomIntelligence/CMB", "CMB-Exam/CMB-val/CMB-val-merge.json"),
}


def suite_path(name: str, download=None) -> Path:
    """The local copy of a known suite: the cache's, else fetched now (`download`: hf_hub_download's
    signature, for tests). DataError in one line when it cannot be fetched."""
    name = name.lower()
    suite = SUITES[name]
    folder = cache_root() / "benchmarks" / name
    target = folder / Path(suite.file).name if not suite.file.endswith(".zip") else folder
    if target.exists():
        return target
    if download is None:
        from huggingface_hub import hf_hub_download as download
    try:
        fetched = Path(download(repo_id=suite.repo, filename=suite.file, repo_type="dataset"))
    except Exception as err:  # offline, a proxy, a moved file: huggingface_hub raises many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot download {BENCHMARK_SUITES[name]} ({suite.repo}: {suite.file}) from the Hugging Face "
                        f"hub ({reason[:160]}); connect to the network, or set HF_ENDPOINT=https://hf-mirror.com, or "
                        "get the files yourself and pass --benchmark FOLDER") from None
    try:
        unpack(fetched, folder, name, suite.file.endswith(".zip"))
    except OSError as err:  # an unwritable cache, a full disk
        raise DataError(f"cannot keep {BENCHMARK_SUITES[name]} in {folder.parent} ({err.strerror or err}); set "
                        "GLMTUNE_CACHE to a writable folder") from None
    return target


def unpack(fetched: Path, folder: Path, name: str, archive: bool) -> None:
    """The fetched file (a zip unpacked) into `folder`, whole or not at all: written into a scratch
    folder beside it, which a process killed meanwhile leaves for the next to clear."""
    for stale in folder.parent.glob(f".{name}.partial-*") if folder.parent.is_dir() else []:
        pid = stale.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    scratch = folder.with_name(f".{name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        if archive:
            try:
                with zipfile.ZipFile(fetched) as zipped:
                    zipped.extractall(scratch)
            except zipfile.BadZipFile:
                raise DataError(f"{fetched}: the downloaded {BENCHMARK_SUITES[name]} archive is damaged; delete it "
                                "and run again") from None
        else:
            shutil.copyfile(fetched, scratch / fetched.name)
        # a zip of one top folder (macOS adds __MACOSX beside it): that folder's content
        inner = [p for p in scratch.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        one_folder = len(inner) == 1 and inner[0].is_dir() and inner[0].name not in ("dev", "val", "test")
        root = inner[0] if one_folder else scratch
        try:
            root.replace(folder)  # whole or not at all; another process may have got there first
        except OSError:
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
