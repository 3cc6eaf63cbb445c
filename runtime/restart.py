"""Restart policies as Docker defines them (`run --restart`), stdlib only.

`no` never restarts; `always` restarts whatever the exit code; `unless-stopped`
the same unless the user stopped the container (`stop`/`kill`, remembered in its
record until the next `start`); `on-failure[:N]` restarts after a non-zero exit
code, at most N times (0 or no N: no limit). The delay before a restart starts at
100 ms and doubles each time (at most a minute); it falls back to 100 ms when the
container had been up for 10 s or more (Docker's restart manager).
"""

from dataclasses import dataclass

from pyinspect.errors import UsageError

POLICIES = ("no", "always", "on-failure", "unless-stopped")
BACKOFF_START = 0.1
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0


@dataclass(frozen=True)
class RestartPolicy:
    """A parsed `--restart` value."""

    name: str = "no"
    max_retries: int = 0

    def __str__(self) -> str:
        if self.name == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.name


def parse(text: str | None) -> RestartPolicy:
    """'no' | 'always' | 'unless-stopped' | 'on-failure[:N]' -> RestartPolicy (UsageError
    with Docker's wording otherwise). None and '' mean 'no'."""
    if not text:
        return RestartPolicy()
    name, colon, count = str(text).partition(":")
    if name not in POLICIES:
        raise UsageError(
            f"invalid restart policy {text!r}", "use no, always, unless-stopped or on-failure[:N]"
        )
    if not colon:
        return RestartPolicy(name)
    if name != "on-failure":
        raise UsageError(
            f"invalid restart policy {text!r}: maximum retry count cannot be "
            f"used with restart policy '{name}'"
        )
    try:
        n = int(count)
    except ValueError:
        raise UsageError(
            f"invalid restart policy {text!r}: maximum retry count must be an integer"
        ) from None
    if n < 0:
        raise UsageError(f"invalid restart policy {text!r}: maximum retry count cannot be negative")
    return RestartPolicy(name, n)


def should_restart(
    policy: RestartPolicy,
    exit_code: int,
    manually_stopped: bool,
    restart_count: int,
    at_boot: bool = False,
) -> bool:
    """Docker's decision after an exit; `at_boot` is Docker's daemon start, where
    `always` brings back even a container the user had stopped."""
    if policy.name == "always":
        return at_boot or not manually_stopped
    if policy.name == "unless-stopped":
        return not manually_stopped
    if policy.name == "on-failure":
        if manually_stopped:
            return False
        if policy.max_retries and restart_count >= policy.max_retries:
            return False
        return exit_code != 0
    return False


class Backoff:
    """The delays between restarts of one monitor: 0.1 s, 0.2 s, 0.4 s ... 60 s, back to
    0.1 s after a run of RESET_AFTER seconds or more."""

    def __init__(self) -> None:
        self.delay = 0.0

    def next(self, ran_seconds: float) -> float:
        if ran_seconds >= RESET_AFTER:
            self.delay = 0.0
        self.delay = BACKOFF_START if self.delay == 0 else min(self.delay * 2, BACKOFF_MAX)
        return self.delay
