"""One exception family for every pyinspect library; the CLI turns them into one line.

Each class carries its exit code. Messages read as `<what failed>: <why>`; an
optional hint says what to do about it.
"""


class PyinspectError(Exception):
    """A failure worth one line to the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(PyinspectError):
    """Bad input: a malformed argument, option or file."""

    exit_code = 2


class NotFoundError(PyinspectError):
    """No such image, container, network, session or file."""

    exit_code = 3


class ConflictError(PyinspectError):
    """The name, port, address or object is already taken or in the wrong state."""

    exit_code = 4


class UnavailableError(PyinspectError):
    """The kernel, a tool or a permission this needs is not there."""

    exit_code = 5


class CorruptInputError(UsageError):
    """An archive, capture or state file is damaged or hostile."""
