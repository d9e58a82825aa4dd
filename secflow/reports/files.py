"""Report files on disk: private (0600 files, 0700 directories) and never through a link.

Reports hold findings, evidence and error messages: only the account that runs SecFlow
reads them. A file is written to a random temporary name created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (a link planted there makes the open fail, it is never
followed; another random name is tried) and then renamed over the target, all relative to
a descriptor of the directory opened with ``O_NOFOLLOW``. A rename replaces a link planted
at the target itself instead of writing through it, so a reader sees the old file or the
whole new one, and nothing outside the directory is ever touched.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_TEMP_TRIES = 8  # a random 128-bit name collides only when someone planted it: try a few, then give up

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeReportPath(OSError):
    """The report path is a link or not a directory where one is needed."""


def temp_name(final_name: str) -> str:
    """A fresh, unpredictable temporary name next to `final_name` (hidden, `.tmp`)."""
    return f".{final_name}.{secrets.token_hex(16)}.tmp"


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeReportPath(
                exc.errno, f"{path} is a symbolic link or not a directory; refusing to write reports there"
            ) from None
        raise


def ensure_private_dir(path: Path) -> None:
    """Create `path` and any missing parents with mode 0700; `path` itself must not be a link.

    An existing `path` is narrowed to 0700 (it is SecFlow's own); existing parents are
    left as they are (they may be shared directories such as the data dir's parent)."""
    missing: list[Path] = []
    p = path
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by a concurrent writer; checked below like any existing one
    fd = _open_dir(path)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def write_private_file(path: Path, text: str, *, make_dir: bool = False) -> Path:
    """Write `text` to `path` (UTF-8, mode 0600), all or nothing, never following a link.

    With `make_dir` the directory is created (0700, see `ensure_private_dir`); without it
    the directory must exist and is left as it is (a user's own `-o` directory)."""
    if make_dir:
        ensure_private_dir(path.parent)
    data = text.encode("utf-8")
    dir_fd = _open_dir(path.parent)
    try:
        tmp, fd = _create_temp(path.name, dir_fd)
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # the umask can only narrow it; be exact
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink_quietly(tmp, dir_fd)
            raise
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return path


def _create_temp(final_name: str, dir_fd: int) -> tuple[str, int]:
    """Create (O_EXCL, O_NOFOLLOW) an empty temporary file: its name and an open descriptor."""
    for _ in range(_TEMP_TRIES):
        name = temp_name(final_name)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            continue  # something is there already (a planted link?): never reuse it
        return name, fd
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {final_name} after {_TEMP_TRIES} tries")


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass  # never created, or already renamed into place


__all__ = ["DIR_MODE", "FILE_MODE", "UnsafeReportPath", "ensure_private_dir", "temp_name", "write_private_file"]
