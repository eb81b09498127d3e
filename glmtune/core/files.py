"""Writing outputs so that a kill or a full disk never leaves a half-written file that looks whole,
and recognising a failed write whoever reports it."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

# Errors that mean the disk (or the user's share of it) is full.
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a kill or a full disk never
    leaves a half-written file where a whole one is expected. An OSError names `path`."""
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(scratch, 0o666 & ~umask())  # mkstemp's 0600 would hide the file from other users
        os.replace(scratch, path)
    except OSError as err:
        Path(scratch).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_failure(err: BaseException) -> str | None:
    """Why a write failed, if `err` (or an error it arose from) is a failed write; else None.
    torch and safetensors report a full disk in their own words rather than as an OSError."""
    seen: BaseException | None = err
    while seen is not None:
        text = str(seen)
        if isinstance(seen, OSError) and seen.errno in FULL:
            return "no space left on the device"
        if type(seen).__name__ == "SafetensorError" and ("os error 28" in text or "No space left" in text):
            return "no space left on the device"
        if isinstance(seen, RuntimeError) and ("PytorchStreamWriter" in text or "unexpected pos" in text):
            return "the disk is full or failing"  # torch's zip writer keeps no errno
        seen = seen.__cause__ or seen.__context__
    return None


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def free_space(path: Path) -> str:
    """Free space on the disk that holds `path`, for messages."""
    return f"{free_bytes(path) / 2**30:.1f} GiB free"


def cache_root() -> Path:
    return Path(os.environ.get("GLMTUNE_CACHE", Path.home() / ".cache" / "glmtune"))
