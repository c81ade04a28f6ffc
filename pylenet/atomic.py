"""Writing files so that nothing a user saved is ever lost or half-written.

Every file pylenet writes (checkpoints, cudnn-training weights, downloads, histories,
benchmark results) goes through here: it is written in full under a temporary name in the
same folder, flushed to disk, and renamed onto its final name in one step, so a reader sees
the old file or the new one, never a mix. The new file gets the permissions an ordinary
``open()`` would give it (the umask applies), and a file it replaces keeps its mode.

A process killed mid-write (SIGKILL, power loss) cannot remove its temporary, so the names
carry the writer's process id (``.<name>.<pid>-<token>.tmp``) and the next write to the same
name removes those whose process is gone.
"""
import os
import re
import secrets
import stat

__all__ = ["write_atomic", "check_target", "temp_path", "commit", "discard", "sweep_stale"]


def check_target(path, label):
    """Refuses, before any work, a path that cannot be written: its folder missing (pylenet never
    creates folders for you) or the path itself a folder. `label` names it in the message (a
    flag such as "--save", or the calling function). Returns the path as a str."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{label} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{label} {path} is a folder")
    return path


def temp_path(final):
    """A fresh temporary name beside ``final``, tagged with this process's id."""
    folder, name = os.path.split(os.path.abspath(os.fspath(final)))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid):
    if pid == os.getpid():
        return True  # another thread of ours may be writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its files alone
    return True


def sweep_stale(final):
    """Removes the temporaries of earlier writes to ``final`` whose process no longer runs."""
    folder, name = os.path.split(os.path.abspath(os.fspath(final)))
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)-[0-9a-f]{8}\.tmp")
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m and not _alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass


def open_temp(final):
    """(fd, tmp) of a new temporary for ``final``: mode 0666 less the umask, or the mode of the
    file it will replace."""
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        os.fchmod(fd, stat.S_IMODE(os.stat(final).st_mode))
    except FileNotFoundError:
        pass
    except OSError:
        pass  # not ours to change: keep the umask's mode
    return fd, tmp


def commit(pairs):
    """Renames each (tmp, final) into place, then makes the renames durable."""
    for tmp, final in pairs:
        os.replace(tmp, final)
    for folder in {os.path.dirname(os.path.abspath(final)) for _, final in pairs}:
        fsync_dir(folder)


def discard(tmps):
    for tmp in tmps:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def fsync_dir(folder):
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


def write_atomic(path, write, text=False):
    """Calls ``write(f)`` on a temporary file, then puts it at ``path`` in one rename. If
    ``write`` raises (or the process is interrupted), ``path`` is untouched and the temporary
    removed. Returns ``path``."""
    path = os.fspath(path)
    sweep_stale(path)
    fd, tmp = open_temp(path)
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        commit([(tmp, path)])
    except BaseException:
        discard([tmp])
        raise
    return path
