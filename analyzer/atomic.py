"""Write outputs atomically: a temporary file beside the target, then a rename.

Only a regular file (or a name not taken yet) is replaced that way. A symlink is followed and
its target replaced, so the link stays a link; a character device, FIFO or socket (``--output
/dev/null`` as root, a pipe a CI step reads) is written through, as a shell redirection does,
since renaming a file over it would replace the device node itself. A FIFO that no program
reads is refused at once (``ENXIO``) rather than waited on.

A file that is rewritten in place (``fix --in-place``) is held under an exclusive lock
(``exclusive_lock``) from before it is read until its replacement is in place, so that runs on
the same file take turns: each reads the whole pair of model and data file the one before left.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]


def new_file_mode(path: Path) -> int:
    """The mode a plainly created file would get: the target's own if it exists, else
    0o666 less the umask (mkstemp's temporaries are 0o600, too private for a report)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file that writing ``path`` changes: a symlink's final target, else ``path``."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or unreadable (a symlink loop): writing it reports why
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def fsync_file(path: Path) -> None:
    """Flush a file written by another library to the disk before a rename publishes it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    target = write_target(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if special_kind(target) is not None:
        # No O_CREAT: if the device vanished meanwhile, fail rather than create a file there.
        fifo = stat.S_ISFIFO(target.stat().st_mode)
        try:
            # A FIFO is opened without waiting: with no program reading it, open would block
            # until one comes (forever, in a CI step nobody reads).
            fd = os.open(target, os.O_WRONLY | (os.O_NONBLOCK if fifo else 0))
        except OSError as exc:
            if fifo and exc.errno == errno.ENXIO:
                raise OSError(errno.ENXIO, "a FIFO that no program is reading") from None
            raise
        if fifo:
            os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        return
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, new_file_mode(target))
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_pair(
    staged: Path, staged_data: Path | None, out: Path, obsolete: Sequence[Path]
) -> None:
    """Rename a staged model over ``out``, its new data file in beside it first.

    The data file's name is one no file had, so the model's rename is the single step that
    switches ``out`` from the whole old pair to the whole new one: interrupted before it,
    ``out`` is the old model with its old data and the new data file is removed again; after
    it, the old data files (``obsolete``) are removed.
    """
    fsync_file(staged)
    if staged_data is None:
        os.replace(staged, out)
    else:
        fsync_file(staged_data)
        data = out.parent / staged_data.name
        create_from(staged_data, data)
        try:
            os.replace(staged, out)
        except BaseException:
            data.unlink(missing_ok=True)
            raise
    fsync_folder(out.parent)
    for old in obsolete:
        with suppress(OSError):
            old.unlink()


def create_from(source: Path, path: Path) -> None:
    """Give ``source``'s file the new name ``path``, never replacing a file of that name."""
    try:
        os.link(source, path)  # fails with FileExistsError rather than replace
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "appeared while writing", str(path)) from None
        os.rename(source, path)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file at ``path`` (waiting for it while another process
    holds it). Replacing the file by a rename does not release the lock, so once it is held the
    name is checked to be still that file: if another holder replaced it meanwhile, the new
    file is locked instead. A missing file (or one that cannot be opened) is not locked: reading
    it reports why."""
    fd = None
    while fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            break
        except BaseException:  # Ctrl-C while waiting
            os.close(fd)
            raise
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except OSError:  # removed meanwhile: open reports it
            pass
        os.close(fd)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
