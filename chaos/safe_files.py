"""Files in places other users may write to, and text that came from them.

chaos runs as root on shared machines. A run directory may sit on a shared filesystem and be prepared by
someone else (`chaos report DIR`); a golden cache is shared by design. So every file chaos writes there is
written without following a symbolic link (a planted `summary.txt -> ~/.ssh/authorized_keys` must not
redirect root's write), and every file chaos reads from there is a regular file of bounded size (a FIFO
must not hang it, `/dev/zero` must not exhaust its memory). Text read from such places, or printed by a
rank, is made harmless before it reaches a terminal, a summary, JUnit XML or HTML.

The rules, one place for each:

- `write_file`: a new temporary file beside the target (O_CREAT|O_EXCL|O_NOFOLLOW, so a planted link or an
  existing file is never opened), then renamed over the target (rename replaces a link, never follows it).
  The parent directory is opened with O_NOFOLLOW too, every component below `root` when one is given.
- `append_line`: O_APPEND|O_NOFOLLOW on a regular file.
- `read_text` / `read_bytes`: O_NOFOLLOW|O_NONBLOCK, regular files only, at most `limit` bytes.
- `printable`: control characters (ESC, CR, BEL, ...) shown escaped; `one_line` also escapes newlines.
- `check_identifier`: fault ids and other names that end up in file names and reports.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from pathlib import Path, PurePosixPath

from chaos.errors import InputError

MiB = 1 << 20
SMALL_FILE_LIMIT = 16 * MiB
"""Scenarios, plans, goldens, reports' inputs: far larger than any real one, far smaller than memory."""

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFile(OSError):
    """A path chaos was asked to read or write is not what it must be (a link, a FIFO, too large, ...).
    Its message names the path and what was wrong; callers turn it into an InputError or a finding."""


def _why(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a symbolic link (chaos does not follow links in run directories or golden caches)"
    if error.errno == errno.ENOENT:
        return "does not exist"
    if error.errno == errno.ENOTDIR:
        return "is not a directory"
    if error.errno == errno.EEXIST:
        return "already exists"
    return error.strerror or str(error)


# ---- directories ------------------------------------------------------------------------------------------
def open_dir(path: Path, root: Path | None = None) -> int:
    """An fd of directory `path`, opened without following a link: every component below `root` when given
    (`path` must then lie inside `root`; `root` itself is trusted: the user named it), else the last one."""
    path = Path(path)
    if root is None:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        except OSError as error:
            raise UnsafeFile(error.errno, f"{path}: {_why(error)}") from None
    return _walk(path, root)


def make_dirs(path: Path, root: Path | None = None, mode: int = 0o755) -> None:
    """mkdir -p that never follows a link: below `root` (trusted; default: the nearest existing ancestor)
    each component is created or opened with O_NOFOLLOW; an existing link or non-directory is refused."""
    path = Path(path)
    if root is None:
        root = path.absolute().parent
        while not root.exists():
            root = root.parent
    os.close(_walk(path, root, create_mode=mode))


def _walk(path: Path, root: Path, create_mode: int | None = None) -> int:
    """An fd of directory `path`, reached from `root` one component at a time with O_NOFOLLOW (each created
    first, with `create_mode`, when given)."""
    relative = _relative_parts(path, root)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise UnsafeFile(error.errno, f"{root}: {_why(error)}") from None
    try:
        for part in relative:
            if create_mode is not None:
                try:
                    os.mkdir(part, create_mode, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except OSError as error:
                raise UnsafeFile(error.errno, f"{path}: {part}: {_why(error)}") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _relative_parts(path: Path, root: Path) -> tuple[str, ...]:
    try:
        parts = PurePosixPath(os.path.relpath(Path(path).absolute(), Path(root).absolute())).parts
    except ValueError:
        parts = ("..",)
    if parts == (".",):
        return ()
    if any(p in ("..", "") for p in parts):
        raise UnsafeFile(errno.EPERM, f"{path}: lies outside {root}")
    return parts


# ---- writing ----------------------------------------------------------------------------------------------
def write_file(path: Path, data: str | bytes, *, root: Path | None = None, mode: int = 0o644) -> None:
    """Replaces `path` with `data`: written to a fresh temp file in the same directory, then renamed over it.
    Never follows a link at `path` (the link itself is replaced) or in its directory (below `root`)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    dir_fd = open_dir(path.parent, root)
    try:
        temp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.rename(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
    finally:
        os.close(dir_fd)


def append_line(path: Path, line: str, *, mode: int = 0o644) -> None:
    """Appends one line to a regular file (created if missing), never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(errno.EINVAL, f"{path}: is not a regular file")
        os.write(fd, (line if line.endswith("\n") else line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


# ---- reading ----------------------------------------------------------------------------------------------
def open_regular(path: Path, root: Path | None = None, writable: bool = False) -> int:
    """An fd of the regular file `path` (read-write when `writable`), opened without following a link (nor,
    below `root`, any directory link) and without blocking on a FIFO."""
    path = Path(path)
    dir_fd = open_dir(path.parent, root) if root is not None else None
    access = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = os.open(path.name if dir_fd is not None else path, access | os.O_NONBLOCK | _NOFOLLOW,
                     dir_fd=dir_fd)
    except OSError as error:
        raise UnsafeFile(error.errno, f"{path}: {_why(error)}") from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(errno.EINVAL, f"{path}: is not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: Path, limit: int = SMALL_FILE_LIMIT, root: Path | None = None) -> bytes:
    """The whole of a regular file of at most `limit` bytes (UnsafeFile otherwise)."""
    fd = open_regular(path, root)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnsafeFile(errno.EFBIG, f"{path}: is {size} bytes, more than the {limit} bytes chaos reads "
                                          "from such a file")
        chunks, total = [], 0
        while True:  # the size may grow while reading: never read past the limit
            chunk = os.read(fd, min(MiB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafeFile(errno.EFBIG, f"{path}: grew past {limit} bytes while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, limit: int = SMALL_FILE_LIMIT, root: Path | None = None) -> str:
    return read_bytes(path, limit, root).decode("utf-8", errors="replace")


def read_input(path: Path, flag: str, limit: int = SMALL_FILE_LIMIT) -> str:
    """A file the user named (scenario, golden, args_from) as text; an InputError naming it otherwise."""
    try:
        return read_text(path, limit)
    except OSError as error:
        message = str(error) if isinstance(error, UnsafeFile) else f"{path}: {_why(error)}"
        raise InputError(str(path), flag, message.removeprefix(f"{path}: ")) from None


# ---- text from untrusted places ---------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufffe\uffff\ud800-\udfff]")
_CONTROL_AND_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufffe\uffff\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int | None = None) -> str:
    """`text` safe for a terminal, a summary, XML and HTML text: control characters (ESC, CR, BEL, NUL, ...)
    shown as \\xNN escapes; newlines and tabs kept. Cut to `limit` characters when given."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return _CONTROL.sub(_escape, text)


def one_line(text: object, limit: int | None = 500) -> str:
    """Like printable, and newlines escaped too: for text that must stay on its line (ids, argv, a log line)."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return _CONTROL_AND_NEWLINE.sub(_escape, text)


IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
"""Fault ids and similar names: they become parts of file and cgroup names and lines of reports."""


def check_identifier(value: object, source: str, field: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        from chaos.errors import show

        raise InputError(source, field, f"expected an identifier (letters, digits, '_', '.', ':', '-'; "
                                        f"at most 64 characters, starting with a letter or digit), got {show(value)}")
    return value


# ---- lines of a growing or untrusted file -----------------------------------------------------------------
class LineSplitter:
    """Complete lines out of bytes that arrive in pieces (a rank's output or history read as it grows, a
    history read in blocks), holding at most `cap` bytes of an unterminated line. A rank printing 400 MiB
    without a newline must cost neither 400 MiB of memory nor a copy of it on every poll: past the cap the
    line comes out once, cut to `cap` bytes (`cut` true), and the rest of it up to its newline is skipped."""

    def __init__(self, cap: int = MiB) -> None:
        self.cap = cap
        self._partial = bytearray()
        self._skipping = False  # inside an over-long line already handed out cut

    @property
    def pending(self) -> int:
        """Bytes of the unterminated line held now (never more than `cap`)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """(line without its newline, cut) for every line `data` completes or makes over-long."""
        out: list[tuple[bytes, bool]] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if self._skipping:
                self._skipping = end < 0
            elif len(self._partial) + len(piece) > self.cap:
                room = self.cap - len(self._partial)
                out.append((bytes(self._partial) + piece[:room], True))
                self._partial.clear()
                self._skipping = end < 0
            elif end >= 0:
                out.append((bytes(self._partial) + piece, False))
                self._partial.clear()
            else:
                self._partial += piece
            if end < 0:
                break
            start = end + 1
        return out

    def rest(self) -> bytes:
        """The unterminated last line (the writer is gone for good); the splitter is empty afterwards."""
        rest = bytes(self._partial)
        self._partial.clear()
        self._skipping = False
        return rest


def open_append(path: Path, mode: int = 0o644):
    """A binary append handle on a regular file (created if missing), never through a link: a rank's output
    file in a run directory someone else may have prepared."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(errno.EINVAL, f"{path}: is not a regular file")
    return os.fdopen(fd, "ab")
