"""Folders held by one process at a time (a lock that dies with its holder, shared by readers, and
leaving no trace when refused) and a folder published whole or not at all."""

import errno
import os
import signal
import subprocess
import sys

import pytest

from glmtune.comparison.job import compare
from glmtune.core import folders
from glmtune.core.config import CompareConfig, ExportConfig
from glmtune.core.errors import RunDirError
from glmtune.export.job import export
from glmtune.training.job import FineTune, train

from conftest import REPO, copy_run, quick


# --- one process at a time -----------------------------------------------------------------------

def test_a_live_run_holds_its_folder_against_training_comparing_and_exporting(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    busy = rf"another process \(pid {os.getpid()}\) is training in {run}; wait for it to finish"
    with FineTune(quick(data_file, run, "--overwrite")) as live:
        live.prepare()
        for flags in ([], ["--overwrite"], ["--resume"]):
            with pytest.raises(RunDirError, match=busy):
                train(quick(data_file, run, *flags))
        with pytest.raises(RunDirError, match=busy):
            compare(CompareConfig(adapter=run, output=tmp_path / "report", max_new_tokens=2, num_samples=1))
        with pytest.raises(RunDirError, match=busy):
            export(ExportConfig(adapter=run, output=tmp_path / "merged"))
        assert not (tmp_path / "report").exists() and not (tmp_path / "merged").exists()
    reading = folders.claim(run, "comparing", shared=True)  # the run is free again once the job is left
    with pytest.raises(RunDirError, match=f"another process is reading {run}"):
        train(quick(data_file, run, "--overwrite"))
    folders.claim(run, "comparing", shared=True).release()  # readers share it
    reading.release()


def test_the_lock_dies_with_its_holder(tmp_path):
    with subprocess.Popen(  # leaving the block waits for it and closes its pipe
            [sys.executable, "-c", "import sys, time; from pathlib import Path; from glmtune.core.folders import "
                                   "claim; held = claim(Path(sys.argv[1]), 'training'); print('held', flush=True); "
                                   "time.sleep(60)",
             str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
            with pytest.raises(RunDirError, match=rf"another process \(pid {holder.pid}\) is training in"):
                folders.claim(tmp_path, "training")
        finally:
            holder.send_signal(signal.SIGKILL)
    folders.claim(tmp_path, "training").release()  # kill -9 left the lock file, not the lock


def test_a_refused_claim_leaves_no_trace(tmp_path):
    target = tmp_path / "new" / "export"
    first = folders.claim(target, "exporting")
    with pytest.raises(RunDirError, match="is exporting in"):
        folders.claim(target, "exporting")
    first.abandon()
    assert not (tmp_path / "new").exists()


# --- a folder is published whole or not at all ----------------------------------------------------

@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_publish_swaps_the_folders_and_a_kill_between_two_renames_brings_the_old_one_back(tmp_path, monkeypatch,
                                                                                           exchange):
    if not exchange:
        monkeypatch.setattr(folders, "_exchange", lambda a, b: False)
    target = tmp_path / "comparison"
    target.mkdir()
    (target / "chatglm_comparison.log").write_text("old")
    scratch, held = folders.reserve(target, "comparing")
    assert folders.reserve(target, "comparing") is None  # a second writer is turned away
    (scratch / "chatglm_comparison.log").write_text("new")
    folders.publish(scratch, target, last="chatglm_comparison.json")
    held.release()
    assert [p.name for p in tmp_path.iterdir()] == ["comparison"]
    assert (target / "chatglm_comparison.log").read_text() == "new"

    os.replace(target, tmp_path / ".comparison.replaced")  # killed between the fallback's two renames
    folders.reserve(target, "comparing")[1].release()
    assert (target / "chatglm_comparison.log").read_text() == "new"


def test_a_scratch_folder_left_by_a_kill_is_cleared_and_its_name_reused(tmp_path):
    target = tmp_path / "comparison"
    scratch, held = folders.reserve(target, "comparing")
    (scratch / "chatglm_comparison.log").write_text("half")
    held.release()  # the process died: its lock is gone, its scratch is not
    again, held = folders.reserve(target, "comparing")
    assert again == scratch and list(again.iterdir()) == [again / folders.LOCK]
    held.release()


def test_a_run_in_a_read_only_folder_can_still_be_read(tmp_path, monkeypatch):
    opened = os.open

    def read_only(path, flags, *mode):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return opened(path, flags, *mode)

    monkeypatch.setattr(folders.os, "open", read_only)
    folders.claim(tmp_path, "comparing", shared=True).release()  # no lock file can be made there
    with pytest.raises(OSError, match="Read-only"):
        folders.claim(tmp_path, "training")


def test_an_empty_folder_stays_the_same_folder_and_a_link_stays_a_link(trained, tmp_path, monkeypatch):
    from glmtune.comparison.job import output_dir

    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    scratch, held = folders.reserve(here, "comparing")
    (scratch / "chatglm_comparison.log").write_text("new")
    folders.publish(scratch, here, last="chatglm_comparison.json")  # `--output .` from a shell standing in an empty folder
    held.release()
    assert here.stat().st_ino == inode and [p.name for p in here.iterdir()] == ["chatglm_comparison.log"]

    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    target, _, held = output_dir(CompareConfig(adapter=trained[0], output=link))
    held.release()
    assert target == real and link.is_symlink()
