"""Tool-owned output folders: one protocol for a training run, a comparison report and an export.

Claim: every job holds an OS lock (flock) on a hidden `.glmtune.lock` file in the folder it works in:
the kernel drops it when its holder ends, however it ends, so a killed job never blocks the next one
and a live one is never mistaken for an interrupted one. Writers hold it exclusively; readers (a
comparison or an export of a run) share it, so that no training starts over a run while it is read.

Scratch and publish: a folder written in one go (a report, an export) is written whole into a hidden
scratch folder beside its place, `.NAME.partial`, which the writer reserves and locks, and published
by one rename (a swap with an earlier one): a kill leaves the old folder or the new one, never a mix,
and a scratch left by a killed job is cleared by the next. A training run, written over hours, works
in its folder and writes each file atomically instead (files.write_atomic).

Overwrite: a folder's own record says what the tool wrote there (a run's run_config.json, an export's
glmtune_export.json, a report's fixed file names), and --overwrite deletes that and nothing else. A
published folder is swapped whole, so one holding anything else is refused; a run's folder keeps the
rest. What is deleted is first moved into a hidden `.replacing-*` folder (`delete`), so that a file
that cannot be removed leaves everything in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import RunDirError

try:
    import fcntl
except ImportError:  # Windows: no flock; jobs there are not guarded against each other
    fcntl = None

LOCK = ".glmtune.lock"
ASIDE = ".replacing-"  # delete's scratch inside a folder: what --overwrite deletes, on its way out


@dataclass
class Claim:
    """A lock held on `folder` by this process. `made` lists what the claim created (the folder,
    the lock file), which `abandon` removes again when the job is refused before it wrote anything."""

    folder: Path
    fd: int | None
    made: list[Path]

    def __del__(self) -> None:  # a job dropped without being left (a library caller's) lets go too
        self.release()

    def release(self) -> None:
        """Let other processes at the folder."""
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the lock
            self.fd = None

    def abandon(self) -> None:
        """Release, and leave the folder as the claim found it (a refused job leaves no trace)."""
        self.release()
        for path in reversed(self.made):
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:  # something else was written there meanwhile: it stays
                pass


def claim(folder: Path, doing: str, shared: bool = False) -> Claim:
    """Lock `folder` (made if missing) for this process, which is `doing` something there
    ('training', 'comparing', ...). Exclusive unless `shared`. RunDirError, naming the process that
    holds it and what it does, when another process holds it in a way that excludes this one."""
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{folder} is a file; choose a folder")
    made = [p for p in (*reversed(folder.parents), folder) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    if not path.exists():
        made.append(path)
    if fcntl is None:
        return Claim(folder, None, made)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if not shared or err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        if not path.exists():  # a read-only folder: nobody can train into it, so there is none to keep out
            return Claim(folder, None, [])
        fd = os.open(path, os.O_RDONLY)  # flock needs no write access
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        Claim(folder, None, made).abandon()
        raise RunDirError(f"{busy(folder)}; wait for it to finish (or stop it), then run this again") from None
    if not shared:  # the holder's name, for the message of a process that finds it busy
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {doing}\n".encode(), 0)
    return Claim(folder, fd, made)


def busy(folder: Path) -> str:
    """Who holds `folder`'s lock, as the start of a sentence, e.g. 'another process (pid 4242) is
    training in out'."""
    try:
        pid, doing = (folder / LOCK).read_text(encoding="utf-8").split(maxsplit=1)
    except (OSError, ValueError):
        pid, doing = "?", "working"
    if fcntl is not None and _exclusive_is_free(folder):  # only readers hold it: the text is an old writer's
        return f"another process is reading {folder} (a comparison or an export)"
    return f"another process (pid {pid}) is {doing.strip()} in {folder}"


def _exclusive_is_free(folder: Path) -> bool:
    """Whether a shared lock can be had, i.e. no process holds the folder exclusively."""
    fd = os.open(folder / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def held(folder: Path) -> bool:
    """Whether a live process holds `folder`'s lock exclusively (a job is writing there now)."""
    if fcntl is None or not (folder / LOCK).is_file():
        return False
    return not _exclusive_is_free(folder)


def remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- overwrite: delete what the folder's record says the tool wrote, nothing else -------------------

def is_own_scratch(name: str) -> bool:
    """Whether an entry of an output folder is this protocol's own (its lock, a deletion killed
    half-way), which is the tool's to clear whatever the folder's record says."""
    return name == LOCK or name.startswith(ASIDE)


def foreign(folder: Path, ours: Callable[[Path], bool]) -> list[Path]:
    """The entries of `folder` that the tool did not write (`ours` says which it did, from the
    folder's record), by name: what --overwrite must not delete."""
    return sorted(p for p in folder.iterdir() if not is_own_scratch(p.name) and not ours(p))


def delete(folder: Path, entries: list[Path], flag: str) -> list[str]:
    """--overwrite: delete `entries` of `folder` (checked by the caller to be what the tool wrote).
    They are first moved into a hidden scratch folder, so that one that cannot be moved (no
    permission) leaves everything in place: RunDirError naming it and `flag` (the output's), nothing
    deleted. A kill meanwhile leaves that scratch, which is the next overwrite's to clear. Returns
    what could not be deleted after the move, for the user."""
    aside = Path(tempfile.mkdtemp(prefix=ASIDE, dir=folder))
    moved: list[Path] = []
    try:
        for item in entries:
            os.rename(item, aside / item.name)
            moved.append(item)
    except OSError as err:
        for item in reversed(moved):
            os.rename(aside / item.name, item)
        aside.rmdir()
        raise RunDirError(f"--overwrite cannot remove {err.filename} ({err.strerror}); nothing was deleted. Make it "
                          f"writable, or choose another {flag}") from None
    try:
        remove(aside)
    except OSError as err:  # a file in a moved folder that cannot go: the job goes on beside it
        return [f"could not delete {err.filename}; remove {aside} by hand"]
    return []


# --- published folders: written into scratch beside their place, published by one rename ---------

def place(chosen: Path) -> Path:
    """Where a folder the user names is published: the path itself, or where a link (or '.', '..')
    points; publishing replaces the folder, and must not replace the link or the name '.'."""
    if chosen.name in ("", ".", "..") or chosen.is_symlink():
        return chosen.resolve()
    return chosen


def numbered(chosen: Path) -> Iterator[Path]:
    """NAME, NAME-2, NAME-3, ..."""
    yield chosen
    number = 2
    while True:
        yield chosen.with_name(f"{chosen.name}-{number}")
        number += 1


def free(folder: Path) -> bool:
    """Missing, or a folder holding nothing (but this protocol's own scratch). A link is never
    free: outputs go where they are asked, not wherever a link there leads."""
    if folder.is_symlink():
        return False
    return not folder.exists() or (folder.is_dir() and all(is_own_scratch(p.name) for p in folder.iterdir()))


def replaceable(target: Path, ours: Callable[[Path], bool], overwrite: bool) -> bool:
    """Whether publishing may put a folder at `target`: it is free, or with --overwrite a folder of
    nothing but what the tool wrote (checked again just before publishing, as a user may have put a
    file there while the job ran, which must not be swapped away)."""
    return free(target) or (overwrite and target.is_dir() and not target.is_symlink() and not foreign(target, ours))


def scratch_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def aside_for(target: Path) -> Path:
    """Where publish keeps the folder it replaces while the new one moves in (two renames)."""
    return target.with_name(f".{target.name}.replaced")


def reserve(target: Path, doing: str) -> tuple[Path, Claim] | None:
    """Reserve `target` (which must not hold another process's work in progress) by making its
    scratch folder and locking it; None when a live process is writing that scratch. A scratch
    left by a killed job is removed first. The claim's `abandon` also removes the folders made
    above the scratch, for a job refused before it published."""
    scratch = scratch_for(target)
    aside = aside_for(target)
    if aside.exists() and not target.exists():  # killed between publish's two renames: the old one is back
        os.replace(aside, target)
    if scratch.exists():
        if held(scratch):
            return None
        remove(scratch)
    made = [p for p in reversed(target.parents) if not p.exists()]
    try:
        scratch.mkdir(parents=True)
    except FileExistsError:  # another process reserved it between our look and our mkdir
        return None
    lock = claim(scratch, doing)
    lock.made[:0] = [*made, scratch]
    return scratch, lock


def publish(scratch: Path, target: Path, last: str, record: str | None = None) -> None:
    """Move the finished `scratch` folder to `target` in one step. An existing `target` (an
    overwrite, checked with `replaceable` before) is swapped with it atomically where the system can
    (Linux's renameat2), else renamed aside first; either way it is deleted only afterwards. An
    existing empty `target` is kept (it may be where the user's shell stands) and filled: the
    folder's `record` of what the tool wrote first (a kill part-way leaves files --overwrite
    recognises), the file named `last` (whose presence says the folder is whole) last; a failure
    meanwhile takes back out what was moved in."""
    (scratch / LOCK).unlink(missing_ok=True)  # the lock stays held through its open file
    if not target.exists():
        os.replace(scratch, target)
        return
    if target.is_dir() and not any(target.iterdir()):
        moved: list[Path] = []
        try:
            for item in sorted(scratch.iterdir(), key=lambda p: (p.name != record, p.name == last)):
                os.replace(item, target / item.name)
                moved.append(target / item.name)
        except BaseException:
            for path in moved:  # the folder was empty: all of it is this job's
                remove(path)
            raise
        scratch.rmdir()
        return
    if _exchange(scratch, target):  # scratch now holds the old folder
        remove(scratch)
        return
    aside = aside_for(target)  # reserve puts it back after a kill here
    remove(aside)
    os.replace(target, aside)
    os.replace(scratch, target)
    remove(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux 3.15+, glibc 2.28+); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, TypeError, AttributeError):  # no C library by that name, or one without the call
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without the exchange
        return False
    raise OSError(code, os.strerror(code), str(b))
