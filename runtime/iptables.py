"""Which iptables backend pyinspect writes, and how it writes to it.

Like Docker, pyinspect writes its rules with the backend the host's `iptables` command is:
on Debian 12 and most current distributions `/usr/sbin/iptables` is `xtables-nft-multi`
(nf_tables), so the plain `iptables -t nat -nvL` a tutorial shows lists pyinspect's rules;
on a host whose alternative points at `xtables-legacy-multi` they go to x_tables.
`PYINSPECT_IPTABLES=nft|legacy` (or `"iptables"` in the `network` object of
`<root>/config.json`) overrides the choice, for tests and odd hosts.

How each change is written (`writer()`): on nft, one `iptables-restore --noflush` text
(all tables of one family in one exec) applied by `iptables-nft-restore` (`ip6tables-*`
for family 6), which the kernel takes as one transaction; on legacy (x_tables), through
python-iptables (runtime/iptcwrite.py: one libiptc commit per table), or, when
python-iptables cannot be loaded here, the same restore text with `iptables-legacy-restore`
(each `COMMIT` a table replace). Reading stays with probes/iptsave.py (`*-save`, which
never creates a table).
"""

import contextlib
import fcntl
import os
import shutil
import subprocess
import time

from ..errors import UnavailableError, UsageError
from . import iptcwrite

ENV = "PYINSPECT_IPTABLES"
BACKENDS = ("nft", "legacy")
FAMILIES = (4, 6)
LOCK_PATH = "/run/pyinspect-iptables.lock"


def _alternative() -> str | None:
    """'nft' or 'legacy': what the host's plain `iptables` command is, None if unknown."""
    path = shutil.which("iptables") or "/usr/sbin/iptables"
    try:
        real = os.path.basename(os.path.realpath(path))
    except OSError:
        return None
    if "nft" in real:
        return "nft"
    if "legacy" in real:
        return "legacy"
    return None


def backend(configured: str | None = None) -> str:
    """The backend pyinspect writes: env PYINSPECT_IPTABLES, else `configured` (config.json),
    else the host's `iptables` alternative, else whichever restore tool exists."""
    choice = os.environ.get(ENV) or configured
    if choice:
        if choice not in BACKENDS:
            raise UsageError(f"invalid iptables backend {choice!r}", hint="use nft or legacy")
        return choice
    found = _alternative()
    if found:
        return found
    for name in BACKENDS:
        if shutil.which(f"iptables-{name}-restore"):
            return name
    return "legacy"


def tool(backend_name: str, family: int = 4, kind: str = "cmd") -> str:
    """The program name: kind 'cmd' (`iptables-nft`), 'save' or 'restore'; family 4 or 6."""
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{backend_name}" + ("" if kind == "cmd" else f"-{kind}")


def other(backend_name: str) -> str:
    return "legacy" if backend_name == "nft" else "nft"


def show_command(backend_name: str, family: int = 4) -> str:
    """What a user types to see the rules pyinspect wrote with `backend_name`."""
    if backend_name == _alternative():
        return "iptables" if family == 4 else "ip6tables"
    return tool(backend_name, family)


def available(backend_name: str, family: int = 4) -> bool:
    return shutil.which(tool(backend_name, family, "restore")) is not None


def writer(backend_name: str) -> str:
    """What writes `backend_name`'s rules: 'iptables-nft-restore' for nft; for legacy
    'python-iptables', or 'iptables-legacy-restore' when python-iptables cannot be loaded
    here (writer_note() says why)."""
    if backend_name == "legacy" and iptcwrite.load()[0] is not None:
        return "python-iptables"
    return f"iptables-{backend_name}-restore"


def writer_note(backend_name: str) -> str | None:
    """One line when the legacy backend falls back from python-iptables, else None."""
    if backend_name != "legacy":
        return None
    why = iptcwrite.load()[1]
    if why is None:
        return None
    return f"python-iptables unavailable ({why}): legacy rules written with iptables-legacy-restore"


def restore(text: str, backend_name: str, family: int = 4, timeout: float = 20) -> None:
    """Apply `*table ... COMMIT` text with `--noflush` in this process's network namespace:
    all of it or none of it. Raises UnavailableError naming the failing line."""
    prog = tool(backend_name, family, "restore")
    path = shutil.which(prog)
    if not path:
        raise UnavailableError(f"{prog} not found", hint="install the iptables package")
    argv = [path, "--noflush"]
    if backend_name == "legacy":
        argv.append("-w")  # wait for another x_tables writer's lock instead of failing
    try:
        proc = subprocess.run(
            argv, input=text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnavailableError(f"{prog}: {exc}") from None
    if proc.returncode != 0:
        why = " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"
        raise UnavailableError(
            f"{prog} failed: {why}",
            hint="are the iptables modules (nat, conntrack, addrtype) available?",
        )


@contextlib.contextmanager
def lock(timeout: float = 30.0):
    """Serialise pyinspect's read-compare-write of the rules (all state roots, all
    networks): two writers must not both decide to add the same shared rule."""
    fd = os.open(
        os.environ.get("PYINSPECT_IPTABLES_LOCK", LOCK_PATH), os.O_CREAT | os.O_RDWR, 0o600
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        f"pyinspect's iptables lock is held by another pyinspect for {timeout:.0f}s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)
