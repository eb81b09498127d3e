"""Output folders: one process at a time, --overwrite deletes only what the tool wrote, a checkpoint
resumes only its own run, and a report folder is published whole or not at all."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from glmtune.core import folders
from glmtune.comparison.job import Comparison, compare
from glmtune.core.config import CompareConfig, ExportConfig
from glmtune.core.errors import ConfigError, RunDirError
from glmtune.export.job import export
from glmtune.training.job import FineTune, train
from glmtune.training.runs import RUN_CONFIG, RunRecord

from conftest import REPO, KillAtStep, tiny_config

REPORT = [f"chatglm_comparison.{ext}" for ext in ("log", "json", "png", "html")]


def copy_run(trained, tmp_path, name="run"):
    copy = tmp_path / name
    shutil.copytree(trained[0], copy)
    return copy


def quick(data_file, out, *extra):
    return tiny_config(data_file, out, "--max-steps", "1", "--eval-ratio", "0", *extra)


# --- --overwrite deletes what the run wrote, nothing else ---------------------------------------

def test_overwrite_keeps_what_the_tool_did_not_write(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "NOTES.md").write_text("why lr 1e-4", encoding="utf-8")
    (run / "merged").mkdir()
    (run / "merged" / "model.safetensors").write_bytes(b"an export")
    (run / "comparison").mkdir()
    for name in REPORT:
        (run / "comparison" / name).write_text("old report", encoding="utf-8")
    (run / "comparison" / "reading.txt").write_text("my notes on the report", encoding="utf-8")
    shutil.copyfile(data_file, run / "mydata.txt")  # trained on a file kept in the run folder

    job = train(quick(run / "mydata.txt", run, "--overwrite"))

    assert (run / "NOTES.md").read_text(encoding="utf-8") == "why lr 1e-4"
    assert (run / "merged" / "model.safetensors").read_bytes() == b"an export"
    assert (run / "mydata.txt").read_bytes() == data_file.read_bytes()
    assert sorted(p.name for p in (run / "comparison").iterdir()) == sorted([*REPORT, "reading.txt"])  # annotated
    record = RunRecord.load(run)
    assert record.state == "finished" and record.data_sha256 and job.trainer.state.global_step == 1
    assert "kept NOTES.md, comparison, merged and 1 more (not written by this tool)" in job.plan_summary()


def test_overwrite_refuses_to_delete_the_data_file_it_trains_on(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    split = run / RunRecord.load(run).resolved.eval_file
    with pytest.raises(RunDirError, match=rf"--overwrite would delete {split}, and --data {split} is \(in\) it"):
        train(quick(split, run, "--overwrite"))
    assert sorted(p.name for p in run.iterdir()) == before


def test_overwrite_refuses_a_users_file_where_the_run_writes(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    record = json.loads((run / RUN_CONFIG).read_text(encoding="utf-8"))
    record["files"].remove("loss.png")  # as if the user had put their own loss.png there
    (run / RUN_CONFIG).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(RunDirError, match=r"holds loss.png, which this tool did not write \(or which changed since\) "
                                          "and the new run would write over"):
        train(quick(data_file, run, "--overwrite"))
    assert (run / "loss.png").is_file() and (run / "adapter_model.safetensors").is_file()


def stamp_of_another_run(run):
    (run / "checkpoint-99").mkdir()
    (run / "checkpoint-99" / "glmtune_run.json").write_text('{"lora_r": 4}', encoding="utf-8")


@pytest.mark.parametrize("name, setup", [
    ("checkpoint-7", lambda run: (run / "checkpoint-7").mkdir() or (run / "checkpoint-7" / "notes.txt").write_text("x")),
    ("checkpoint-99", stamp_of_another_run),
    ("README.md", lambda run: (run / "README.md").open("a").write("\n## my review of this adapter\n")),
], ids=["a user's folder named like a checkpoint", "another run's checkpoint", "a model card edited since"])
def test_overwrite_refuses_what_only_looks_like_the_runs_own(data_file, trained, tmp_path, name, setup):
    run = copy_run(trained, tmp_path)
    setup(run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunDirError, match=f"holds {name}, which this tool did not write \\(or which changed since\\)"):
        train(quick(data_file, run, "--overwrite"))
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("user_file", ["comparison/.notes.md", "comparison/chatglm_comparison.archive/mine.txt"])
def test_a_report_folder_holding_a_users_file_is_kept_whole(data_file, trained, tmp_path, user_file):
    run = copy_run(trained, tmp_path)
    earlier_report(run)
    (run / user_file).parent.mkdir(exist_ok=True)
    (run / user_file).write_text("mine", encoding="utf-8")
    job = train(quick(data_file, run, "--overwrite"))
    assert (run / user_file).read_text(encoding="utf-8") == "mine" and (run / "comparison" / REPORT[0]).is_file()
    assert "kept comparison (not written by this tool)" in job.plan_summary()


def test_overwrite_that_cannot_remove_a_file_deletes_nothing(data_file, trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    rename = os.rename

    def immutable(src, dst):
        if str(src).endswith("train_prompts.sha256"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
        rename(src, dst)

    monkeypatch.setattr("glmtune.training.runs.os.rename", immutable)
    with pytest.raises(RunDirError, match=r"cannot remove .*train_prompts.sha256 \(Operation not permitted\); nothing "
                                          "was deleted"):
        train(quick(data_file, run, "--overwrite"))
    assert sorted(p.name for p in run.iterdir()) == before and RunRecord.load(run).state == "finished"


@pytest.mark.parametrize("make", [lambda c: c.write_text("not a folder"),
                                  lambda c: c.mkdir() or (c / "results.json").write_text("{}")],
                         ids=["a file", "a folder of other files"])
def test_a_users_checkpoint_named_entry_is_never_cleared_as_cut_short(tmp_path, make):
    from glmtune.training.runs import clear_leftovers

    make(tmp_path / "checkpoint-7")
    with pytest.raises(RunDirError, match="checkpoint-7 is not a checkpoint of this tool's"):
        clear_leftovers(tmp_path)
    assert (tmp_path / "checkpoint-7").exists()


def test_leftovers_that_are_links_are_unlinked_not_followed(tmp_path):
    from glmtune.training.runs import clear_leftovers

    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".x.tmp").symlink_to(data, target_is_directory=True)
    (run / "checkpoint-9").symlink_to(data, target_is_directory=True)
    assert clear_leftovers(run) == ["removed .x.tmp (scratch)", "removed checkpoint-9 (cut short)"]
    assert list(run.iterdir()) == [] and (data / "keep.txt").read_text() == "keep"


def test_a_link_in_the_run_folder_to_the_data_is_unlinked_and_the_data_kept(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    data = tmp_path / "data.txt"
    shutil.copyfile(data_file, data)
    (run / "eval.jsonl").unlink()
    (run / "eval.jsonl").symlink_to(data)
    train(quick(data, run, "--overwrite"))
    assert data.read_bytes() == data_file.read_bytes() and not (run / "eval.jsonl").is_symlink()


def test_a_symlinked_output_dir_is_overwritten_through_the_link(data_file, trained, tmp_path):
    real = copy_run(trained, tmp_path, "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    train(quick(data_file, link, "--overwrite"))
    assert link.is_symlink() and RunRecord.load(real).config.max_steps == 1


def test_a_run_stopped_before_its_first_checkpoint_gives_way_to_other_settings(data_file, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(quick(data_file, run, "--max-steps", "2"), callbacks=[KillAtStep(1)])
    (run / "NOTES.md").write_text("mine", encoding="utf-8")
    job = train(quick(data_file, run, "--lora-r", "4"))  # e.g. the --max-length a refusal asked for
    assert "replaced a run that stopped before its first checkpoint (lora_r 16 -> 4" in job.plan_summary()
    assert RunRecord.load(run).state == "finished" and (run / "NOTES.md").read_text(encoding="utf-8") == "mine"


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
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from glmtune.core.folders import claim; "
                               "held = claim(Path(sys.argv[1]), 'training'); print('held', flush=True); time.sleep(60)",
         str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirError, match=rf"another process \(pid {holder.pid}\) is training in"):
            folders.claim(tmp_path, "training")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    folders.claim(tmp_path, "training").release()  # kill -9 left the lock file, not the lock


def test_a_refused_claim_leaves_no_trace(tmp_path):
    target = tmp_path / "new" / "export"
    first = folders.claim(target, "exporting")
    with pytest.raises(RunDirError, match="is exporting in"):
        folders.claim(target, "exporting")
    first.abandon()
    assert not (tmp_path / "new").exists()


# --- a checkpoint resumes its own run only --------------------------------------------------------

def test_resume_from_a_checkpoint_of_another_run_is_refused(data_file, tmp_path):
    other = tmp_path / "other"
    train(tiny_config(data_file, other, "--max-steps", "2", "--save-steps", "1", "--lora-r", "4"))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5"), callbacks=[KillAtStep(1)])
    foreign = other / "checkpoint-1"
    with pytest.raises(RunDirError, match=rf"{foreign} is a checkpoint of another run \(lora_r 4 -> 16\)"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(foreign)))
    (foreign / "glmtune_run.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(RunDirError, match="glmtune_run.json is damaged \\(not a JSON object\\)"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(foreign)))
    with pytest.raises(RunDirError, match=f"{run} is a run folder, not a checkpoint: --resume alone"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(run)))
    (foreign / "glmtune_run.json").unlink()  # an unmarked checkpoint from elsewhere: cannot be told apart
    with pytest.raises(RunDirError, match="does not say which run wrote it"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(foreign)))
    shutil.copytree(foreign, run / "checkpoint-1")  # unmarked, in the run's own folder: its adapter still tells
    with pytest.raises(RunDirError, match=r"checkpoint-1 holds another run's adapter \(rank 4 \(this run: 16\)\)"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume"))
    assert RunRecord.load(run).state == "running" and not (run / "adapter_model.safetensors").exists()


# --- a report folder is published whole or not at all ---------------------------------------------

def earlier_report(run):
    (run / "comparison").mkdir()
    for name in REPORT:
        (run / "comparison" / name).write_text(f"an earlier {name}", encoding="utf-8")


def test_a_comparison_killed_while_writing_its_overwrite_leaves_the_old_report_whole(trained, tmp_path,
                                                                                       monkeypatch):
    run = copy_run(trained, tmp_path)
    earlier_report(run)
    old = {name: (run / "comparison" / name).read_bytes() for name in REPORT}

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("glmtune.comparison.plots.plot_aggregate", killed)  # the log and JSON are written by then
    with pytest.raises(KeyboardInterrupt):
        compare(CompareConfig(adapter=run, max_new_tokens=3, num_samples=2, overwrite=True))
    assert {name: (run / "comparison" / name).read_bytes() for name in REPORT} == old
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".comparison", "comparison"))) == \
        ["comparison"]


def test_a_failed_comparison_leaves_no_numbered_folder(trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    earlier_report(run)

    def out_of_memory(self):
        raise MemoryError

    monkeypatch.setattr(Comparison, "generate", out_of_memory)
    with pytest.raises(MemoryError):
        compare(CompareConfig(adapter=run, max_new_tokens=2, num_samples=1))
    assert sorted(p.name for p in run.iterdir() if "comparison" in p.name) == ["comparison"]


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
    folders.publish(scratch, target)
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
    folders.publish(scratch, here)  # `--output .` from a shell standing in an empty folder
    held.release()
    assert here.stat().st_ino == inode and [p.name for p in here.iterdir()] == ["chatglm_comparison.log"]

    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    target, _, held = output_dir(CompareConfig(adapter=trained[0], output=link))
    held.release()
    assert target == real and link.is_symlink()


def test_a_file_where_the_default_report_folder_goes_is_numbered_past(trained, tmp_path):
    from glmtune.comparison.job import output_dir

    run = copy_run(trained, tmp_path)
    (run / "comparison").write_text("a user's file")
    target, _, held = output_dir(CompareConfig(adapter=run))
    held.release()
    assert target == run / "comparison-2"


def test_comparison_overwrite_refuses_a_hidden_user_file(trained, tmp_path):
    from glmtune.comparison.job import output_dir

    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "chatglm_comparison.log").write_text("old")
    (folder / ".notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that are not a comparison report \(.notes.md\)"):
        output_dir(CompareConfig(adapter=trained[0], output=folder, overwrite=True))


def test_a_file_put_in_the_report_folder_while_the_models_ran_is_never_swapped_away(trained, tmp_path, monkeypatch,
                                                                                    capsys):
    import glmtune.comparison.scoring

    folder = tmp_path / "report"
    folder.mkdir()  # an empty folder, reserved: the user writes into it during generation
    write_log = glmtune.comparison.scoring.write_log

    def user_writes_first(*args, **kwargs):
        (folder / "draft.md").write_text("my notes", encoding="utf-8")
        write_log(*args, **kwargs)

    monkeypatch.setattr(glmtune.comparison.scoring, "write_log", user_writes_first)
    job = compare(CompareConfig(adapter=trained[0], output=folder, max_new_tokens=2, num_samples=1))
    assert [p.name for p in folder.iterdir()] == ["draft.md"] and job.output == tmp_path / "report-2"
    assert sorted(p.name for p in job.output.iterdir()) == sorted(REPORT)
    assert f"{folder} gained files while the comparison ran; the report goes to {job.output}" in capsys.readouterr().out


def test_reports_never_follow_a_link_or_replace_a_file_in_the_run_folder(trained, tmp_path):
    from glmtune.comparison.job import output_dir

    run = copy_run(trained, tmp_path)
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("years of work")
    (run / "comparison").symlink_to(thesis)
    target, _, held = output_dir(CompareConfig(adapter=run))
    held.release()
    assert target == run / "comparison-2"
    with pytest.raises(ConfigError, match="comparison is a file; choose a folder"):
        output_dir(CompareConfig(adapter=run, overwrite=True))
    assert thesis.read_text() == "years of work"


def test_overwrite_of_a_folder_without_a_run_record_deletes_nothing(data_file, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")  # names a run writes, but no run wrote them
    (folder / "eval.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"holds files that are not a run of this tool \(README.md, eval.txt\)"):
        train(quick(data_file, folder, "--overwrite"))
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "eval.txt"]


def test_a_run_with_a_damaged_checkpoint_does_not_give_way_to_other_settings(data_file, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, run, "--max-steps", "3", "--save-steps", "1"), callbacks=[KillAtStep(2)])
    optimizer = run / "checkpoint-1" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # damaged since: trained weights all the same
    with pytest.raises(RunDirError, match=r"already holds another run \(lora_r 16 -> 4\)"):
        train(tiny_config(data_file, run, "--max-steps", "3", "--save-steps", "1", "--lora-r", "4"))
    assert (run / "checkpoint-1" / "adapter_model.safetensors").is_file()


def test_an_overwrite_killed_while_deleting_is_finished_by_the_next(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    left = run / f".replacing-{os.getpid()}"  # as a kill leaves it, by a process with this one's pid (containers)
    left.mkdir()
    (left / "checkpoint-12").mkdir()
    train(quick(data_file, run, "--overwrite"))
    assert not left.exists() and RunRecord.load(run).config.max_steps == 1
