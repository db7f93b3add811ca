"""Errors the user can act on: the CLI prints them as one line and exits with code 2."""


class MnistlabError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class DataError(MnistlabError):
    """Missing, corrupt or unverifiable dataset files."""


class ConfigError(MnistlabError):
    """An unknown preset, model or optimizer, or a bad option value."""


class UnsafeFileError(MnistlabError):
    """A file that would run code when loaded and was not explicitly trusted."""


class InputImageError(MnistlabError):
    """An image that cannot be classified (not an image, truncated, too large, ...)."""


class WriteError(MnistlabError):
    """A file that could not be written: a full disk, a read-only file system, no permission."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM: `str()` is the one line that says what is saved and how to go on;
    the CLI prints it and exits with `exit_code` (128 + the signal's number: 130, 143)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


def os_error_sentence(e: OSError, doing: str | None = None) -> str:
    """`e` as one sentence without errno or class names: `doing` (e.g. "cannot write checkpoint.pt in runs/a")
    or the path, then what went wrong."""
    import errno
    import os

    path = os.fsdecode(e.filename) if isinstance(e.filename, str | bytes) else e.filename
    what = {
        errno.ENOENT: "not found",
        errno.EEXIST: "already exists",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "is a directory, not a file",
        errno.EACCES: "permission denied",
        errno.EPERM: "not permitted",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.ENAMETOOLONG: "the name is too long",
        errno.ENOTEMPTY: "the directory is not empty",
    }.get(e.errno or 0) or (e.strerror or str(e)).rstrip(".").lower()
    where = doing or (str(path) if path is not None else "")
    return f"{where}: {what}" if where else what
