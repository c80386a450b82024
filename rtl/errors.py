"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""


class RtlError(Exception):
    """A problem the user can fix (bad path, bad YAML, bad layout). Message is one line."""

    exit_code = 2  # the CLI's exit status for it (README: exit codes)


class ConfigError(RtlError):
    """A config/spec file failed validation; the message names the file and field."""


class DatasetError(RtlError):
    """A dataset folder is missing or does not follow the convention."""


class RtlRuntimeError(RtlError):
    """Not the input's fault: errored trials, an unreachable cluster or service. The CLI exits 1, not 2."""

    exit_code = 1
