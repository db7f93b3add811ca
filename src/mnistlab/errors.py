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
