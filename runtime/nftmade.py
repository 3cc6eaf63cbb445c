"""The iptables-nft tables and built-in chains pyinspect made in a network namespace, so
that they go when its last rule there goes and the ruleset is left as it was found.

iptables-nft makes a table and a built-in chain (`nat PREROUTING`, ...) the first time a
rule is added to it and never removes them. pyinspect has no daemon: `run` adds its rules
and the `rm` of a namespace's last container removes them; then the built-in chains it
made are deleted when they are empty with policy ACCEPT (`iptables-nft -X`), and the
tables it made when no chain is left in them (`nft delete table`, when nft is installed).
A table or chain that existed before, or that gained someone else's rule, stays.

The record is `/run/pyinspect/nft-made/<netns cookie>.json`: a namespace's netfilter state
ends at reboot as /run does, and the cookie (SO_NETNS_COOKIE), unlike the namespace's
inode, is never given to another namespace while the machine runs. Records of namespaces
deleted with pyinspect's rules still in them are pruned when a new record is made.
"""

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from . import iptables

DIR = Path("/run/pyinspect/nft-made")
SO_NETNS_COOKIE = 71
BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
NFT_FAMILY = {4: "ip", 6: "ip6"}


def netns_cookie() -> int:
    """This process's network namespace's cookie (unique while the machine runs)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return int(struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])


def untidy_reason() -> str | None:
    """Why the tables and chains pyinspect's rules make here are not tidied, or None."""
    try:
        netns_cookie()
    except OSError:
        return (
            "the kernel has no SO_NETNS_COOKIE (before 5.14): the empty nftables tables and "
            "built-in chains pyinspect's rules made stay after its last rule goes, as Docker's do"
        )
    return None


def _path() -> Path | None:
    """This namespace's record, or None without SO_NETNS_COOKIE (kernels before 5.14):
    nothing is recorded or tidied then."""
    try:
        return DIR / f"{netns_cookie()}.json"
    except OSError:
        return None


def _load(path: Path | None) -> dict:
    """{"4": [[table, chain], ...], "6": [...], "ino": the namespace's inode}."""
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    """Write the record (remove it when nothing is left); a /run that cannot be written
    costs the tidying, not the change of rules that is under way."""
    data = {k: v for k, v in data.items() if v}
    with contextlib.suppress(OSError):
        if set(data) <= {"ino"}:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def layout():
    """This namespace's nftables tables and chains (None without nft: nothing is recorded
    or tidied then)."""
    from ..probes import iptsave

    return iptsave.read_nft_layout()


def note(family: int, before, added: Iterable[tuple[str, str]]) -> None:
    """Remember what rules just added ((table, chain) pairs) made: the tables and built-in
    chains that `before` (layout() read before they were written) did not have. A table
    is recorded as (table, "")."""
    if before is None:
        return
    nft = NFT_FAMILY[family]
    made: set[tuple[str, str]] = set()
    for table, chain in added:
        chains = before.get((nft, table))
        if chains is None:
            made.add((table, ""))
        if chain in BUILTIN and chain not in (chains or {}):
            made.add((table, chain))
    if not made:
        return
    path = _path()
    if path is None:
        return
    if not path.exists():
        _prune()
    data = _load(path)
    known = {(x[0], x[1]) for x in data.get(str(family), [])}
    data[str(family)] = [list(x) for x in sorted(known | made)]
    data["ino"] = os.stat("/proc/self/ns/net").st_ino
    _save(path, data)


def _prune() -> None:
    """Drop the records of namespaces that are gone (deleted without pyinspect removing
    its rules first): no named or process namespace has their inode any more."""
    records = list(DIR.glob("*.json")) if DIR.is_dir() else []
    if not records:
        return
    alive = set()
    for ns in [*Path("/run/netns").glob("*"), *Path("/proc").glob("[0-9]*/ns/net")]:
        with contextlib.suppress(OSError):
            alive.add(os.stat(ns).st_ino)
    for rec in records:
        ino = _load(rec).get("ino")
        if isinstance(ino, int) and ino not in alive:
            with contextlib.suppress(FileNotFoundError):
                rec.unlink()


def recorded(family: int) -> bool:
    """True when pyinspect made a table or chain of `family` here that is still recorded."""
    return bool(_load(_path()).get(str(family)))


def tidy(families: Iterable[int]) -> list[str]:
    """Delete the recorded chains of `families` that are now empty with policy accept,
    then the recorded tables left without a chain (one read of the ruleset for all of
    them, none when nothing is recorded); returns what was deleted. Records of what no
    longer exists are dropped; the rest are kept for a later tidy."""
    path = _path()
    data = _load(path)
    families = [f for f in families if data.get(str(f))]
    now = layout() if families else None
    if path is None or now is None:
        return []
    gone: list[str] = []
    for family in families:
        data[str(family)] = _tidy_family(family, data[str(family)], now, gone)
    _save(path, data)
    return gone


def _tidy_family(family: int, made: list, now: dict, gone: list[str]) -> list[list[str]]:
    """tidy() for one family; returns the records kept."""
    nft = NFT_FAMILY[family]
    keep = []
    for table, chain in sorted(made, key=lambda x: x[1] == ""):  # chains before tables
        chains = now.get((nft, table))
        if chains is None or (chain and chain not in chains):
            continue  # someone else removed it
        if chain:
            c = chains[chain]
            if c.rules or c.policy != "accept" or not _delete_chain(family, table, chain):
                keep.append([table, chain])
                continue
            del chains[chain]
            gone.append(f"{table} {chain}")
        elif chains or not _delete_table(family, table):
            keep.append([table, chain])
        else:
            gone.append(f"table {nft} {table}")
    return keep


def _run(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _delete_chain(family: int, table: str, chain: str) -> bool:
    """`iptables-nft -t TABLE -X CHAIN`: iptables-nft deletes an empty built-in chain."""
    prog = shutil.which(iptables.tool("nft", family))
    return prog is not None and _run([prog, "-w", "-t", table, "-X", chain])


def _delete_table(family: int, table: str) -> bool:
    nft = shutil.which("nft")
    return nft is not None and _run([nft, "delete", "table", NFT_FAMILY[family], table])
