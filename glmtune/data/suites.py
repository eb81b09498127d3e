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

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.config import BENCHMARK_SUITES
from ..core.errors import DataError
from ..core.files import cache_root
from ..core.folders import publish, remove, reserve


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
    """The fetched file (a zip unpacked) into `folder`, whole or not at all, through the output-folder
    protocol: written into its reserved scratch beside it (one a killed process left is cleared),
    then published by one rename."""
    display = BENCHMARK_SUITES[name]
    reserved = reserve(folder, f"fetching {display}")
    if reserved is None:
        raise DataError(f"another process is fetching {display} into {folder} now; let it finish, then run this again")
    scratch, held = reserved
    try:
        if archive:
            try:
                with zipfile.ZipFile(fetched) as zipped:
                    zipped.extractall(scratch)
            except zipfile.BadZipFile:
                raise DataError(f"{fetched}: the downloaded {display} archive is damaged; delete it and run "
                                "again") from None
        else:
            shutil.copyfile(fetched, scratch / fetched.name)
        for extra in scratch.glob("__MACOSX"):  # what macOS adds to a zip beside its content
            remove(extra)
        inner = [p for p in scratch.iterdir() if not p.name.startswith(".")]
        if len(inner) == 1 and inner[0].is_dir() and inner[0].name not in ("dev", "val", "test"):
            for item in list(inner[0].iterdir()):  # a zip of one top folder: its content
                item.replace(scratch / item.name)
            inner[0].rmdir()
        publish(scratch, folder, last="test")  # the scored split last, where a folder is filled in place
    except BaseException:
        remove(scratch)
        held.abandon()
        raise
    held.release()
