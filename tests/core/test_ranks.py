"""What a launcher's environment (WORLD_SIZE, RANK) changes, in one process: which process speaks,
and which settings a several-process run refuses."""

import pytest

from glmtune.core import cli, distributed
from glmtune.core.config import CompareConfig, ExportConfig, TrainConfig
from glmtune.core.errors import DataError, Diverged, TrainingError


def one_line_usage_error(capsys, cls, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(cls, "test", list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_the_effective_batch_must_split_over_the_processes(capsys, monkeypatch, data_file, trained):
    monkeypatch.setenv("WORLD_SIZE", "3")
    err = one_line_usage_error(capsys, TrainConfig, "--data", str(data_file))
    assert "--grad-accum 16 (the effective batch, with --batch-size auto) does not split evenly over 3 processes; " \
           "use 15 or 18" in err
    cli.parse_args(TrainConfig, "test", ["--data", str(data_file), "--grad-accum", "18"])
    cli.parse_args(TrainConfig, "test", ["--data", str(data_file), "--batch-size", "2"])  # per process: any count
    out, _ = trained
    assert "--chat is one conversation in one process" in one_line_usage_error(
        capsys, CompareConfig, "--adapter", str(out), "--chat")
    assert "an export is one merge in one process" in one_line_usage_error(
        capsys, ExportConfig, "--adapter", str(out))


@pytest.mark.parametrize("rank, error, line", [
    ("0", DataError("eval.txt: no usable examples"), "error: eval.txt: no usable examples\n"),
    ("1", DataError("eval.txt: no usable examples"), ""),  # the same inputs: rank 0 says it
    ("1", TrainingError("out of GPU memory"), "[rank 1] error: out of GPU memory\n"),  # its own GPU
    ("1", Diverged("the training loss became NaN/inf"), ""),  # every process sees the gathered loss
    ("1", OSError(28, "No space left on device", "out/x"), "[rank 1] error: out/x: no space left on the device; "
                                                           "free some space and run the same command again\n"),
    ("1", distributed.Elsewhere("RunDirError: out holds another run"), ""),  # rank 0 raised and reports it
    ("0", RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:34960"),
     "\nerror: another process of this run stopped (its own line, or the launcher's report, says why); --resume "
     "continues from the last checkpoint\n"),
    ("1", RuntimeError("[pair.cc:537] Read error: Connection reset by peer"),
     "\n[rank 1] error: another process of this run stopped (its own line, or the launcher's report, says why); "
     "--resume continues from the last checkpoint\n"),  # rank 0 may be the one that died
])
def test_each_process_says_only_what_is_its_own(capsys, monkeypatch, rank, error, line):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)

    def main():
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    assert exit_.value.code == 1 and capsys.readouterr().err == line


def test_a_bad_flag_is_said_once_by_rank_0(capsys, monkeypatch, data_file):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(TrainConfig, "test", ["--data", str(data_file), "--lora-r", "0"])
    assert exit_.value.code == 2 and capsys.readouterr().err == ""
