"""Output folders that one process at a time writes, and that a kill leaves recognisable.

Every job holds an OS lock (flock) on a hidden `.glmtune.lock` file in the folder it works in: the
kernel drops it when its holder ends, however it ends, so a killed job never blocks the next one and
a live one is never mistaken for an interrupted one. Writers (training, a report, an export) hold it
exclusively; readers (a comparison or an export of a run) share it, so that no training starts over
a run while it is read. Folders of reports are written whole into a hidden scratch folder beside
their place and published by one rename: a kill leaves either the old report or the new one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import RunDirError

try:
    import fcntl
except ImportError:  # Windows: no flock; jobs there are not guarded against each other
    fcntl = None

LOCK = ".glmtune.lock"


@dataclass
class Claim:
    """A lock held on `folder` by this process. `made` lists what the claim created (the folder,
    the lock file), which `abandon` removes again when the job is refused before it wrote anything."""

    folder: Path
    fd: int | None
    made: list[Path]

    def __del__(self) -> None:  # a job dropped without being left (a library caller's) lets go too
        self.release()

    def release(self, tidy: bool = False) -> None:
        """Let other processes at the folder; `tidy` also removes the lock file (a finished export
        is copied and uploaded as a whole, and a stray hidden file has no business there)."""
        if tidy:
            (self.folder / LOCK).unlink(missing_ok=True)
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


# --- report folders: written into scratch beside their place, published by one rename -----------

def scratch_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def reserve(target: Path, doing: str) -> tuple[Path, Claim] | None:
    """Reserve `target` (which must not hold another process's work in progress) by making its
    scratch folder and locking it; None when a live process is writing that scratch. A scratch
    left by a killed job is removed first."""
    scratch = scratch_for(target)
    aside = target.with_name(f".{target.name}.replaced")
    if aside.exists() and not target.exists():  # killed between publish's two renames: the old one is back
        os.replace(aside, target)
    if scratch.exists():
        if held(scratch):
            return None
        remove(scratch)
    try:
        scratch.mkdir(parents=True)
    except FileExistsError:  # another process reserved it between our look and our mkdir
        return None
    return scratch, claim(scratch, doing)


def publish(scratch: Path, target: Path) -> None:
    """Move the finished `scratch` folder to `target` in one step. An existing `target` (an
    overwrite, checked for foreign files before) is swapped with it atomically where the system can
    (Linux's renameat2), else renamed aside first; either way it is deleted only afterwards. An
    existing empty `target` is kept (it may be where the user's shell stands) and filled."""
    (scratch / LOCK).unlink(missing_ok=True)  # the lock stays held through its open file
    if not target.exists():
        os.replace(scratch, target)
        return
    if target.is_dir() and not any(target.iterdir()):
        # An empty folder the user made (or stands in): it stays, and the files move in, the
        # JSON report last; there is no earlier report to mix with.
        for item in sorted(scratch.iterdir(), key=lambda p: p.suffix == ".json"):
            os.replace(item, target / item.name)
        scratch.rmdir()
        return
    if _exchange(scratch, target):  # scratch now holds the old report
        remove(scratch)
        return
    aside = target.with_name(f".{target.name}.replaced")  # reserve puts it back after a kill here
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
