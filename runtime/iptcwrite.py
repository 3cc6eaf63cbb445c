"""The legacy backend's writer: python-iptables (libiptc), one commit per table per change.

portmap.sync() hands each change of the legacy backend (x_tables) to `apply()`: per table,
a fresh libiptc handle (a snapshot of the table in this process's network namespace), the
chains it needs created, the old rules deleted by content (as `-D` would), the new ones
appended or inserted at the top, emptied chains deleted, then one commit, which the kernel
takes as one table replace: all of it or none of it. Every rule of the change is built
before the first table is touched, so an unknown match, a bad parameter or a missing rule
changes nothing; only the kernel refusing a table at commit (a target not valid there)
can leave an earlier table of the same change committed, as with `iptables-legacy-restore`,
which commits at each `COMMIT` line too.

Each family's write runs in a forked child (apply()): libxtables' extension registry is
process-wide and registers a library's extensions for the family it was first loaded for,
so one process cannot build IPv4 and IPv6 rules of the same extension (DNAT, MASQUERADE).

x_tables writers serialise on /run/xtables.lock (iptables-legacy and Docker take it);
so does `apply()`, for the whole read-modify-commit.

When python-iptables cannot be loaded here (not installed, or its libxtables/libiptc
will not load), `load()` says why and the caller falls back to `iptables-legacy-restore`
(runtime/iptables.writer() reports which one is used, `pyinspect info` shows it).
python-iptables cannot write nf_tables: the nft backend always uses iptables-nft-restore.
"""

import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import UnavailableError

XT_LOCK = "/run/xtables.lock"
_LIBDIRS = ("/usr/lib/*/xtables", "/usr/lib64/xtables", "/usr/lib/xtables", "/lib/xtables")

_state: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class Fields:
    """One rule as libiptc gets it; matches in order, the comment match among them."""

    src: str | None = None
    dst: str | None = None
    in_: str | None = None
    out: str | None = None
    proto: str | None = None
    matches: tuple[tuple[str, tuple[tuple[str, str | list[str]], ...]], ...] = ()
    target: str = ""
    target_params: tuple[tuple[str, str | list[str]], ...] = ()


@dataclasses.dataclass(frozen=True)
class TableOps:
    """What one change does to one table, in this order."""

    table: str
    new_chains: tuple[str, ...]
    deletes: tuple[tuple[str, Fields], ...]  # (chain, rule)
    adds: tuple[tuple[str, Fields, bool], ...]  # (chain, rule, insert at the top)
    drop_chains: tuple[str, ...]


def load() -> tuple[Any, str | None]:
    """(the iptc module, None), or (None, why python-iptables cannot be used here)."""
    if "mod" in _state or "why" in _state:
        return _state.get("mod"), _state.get("why")
    saved = os.environ.get("XTABLES_LIBDIR")
    try:
        if saved is None:
            # python-iptables runs `ldconfig -v` to find the extensions without it
            found = [d for pat in _LIBDIRS for d in sorted(glob.glob(pat)) if os.path.isdir(d)]
            if found:
                os.environ["XTABLES_LIBDIR"] = found[0]
        import iptc  # noqa: PLC0415  only on the legacy write path

        # libxtables and one extension of both families (comment is NFPROTO_UNSPEC);
        # family-specific ones are loaded only in apply()'s child, see there
        iptc.Rule().create_match("comment")
    except Exception as exc:  # noqa: BLE001 ImportError, OSError, XTablesError, TypeError...
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        _state["why"] = why
        return None, why
    finally:
        if saved is None:
            os.environ.pop("XTABLES_LIBDIR", None)
    _state["mod"] = iptc
    return iptc, None


def parse_args(args: Sequence[str]) -> Fields:
    """A rule as `*-save` prints it after `-A CHAIN` (tokens) as Fields."""
    flags = {"-s": "src", "-d": "dst", "-i": "in_", "-o": "out", "-p": "proto"}
    out: dict[str, Any] = {}
    matches: list[tuple[str, tuple]] = []
    target, tparams = "", ()
    toks = list(args)
    i, neg = 0, False

    def params(j: int) -> tuple[tuple, int]:
        got: list[tuple[str, str | list[str]]] = []
        while j < len(toks) and toks[j] not in ("-m", "-j", "-g"):
            inv = toks[j] == "!"
            if inv:
                j += 1
            if j >= len(toks) or not toks[j].startswith("--"):
                raise UnavailableError(f"cannot read rule {' '.join(toks)!r}")
            key, j = toks[j][2:], j + 1
            vals = []
            while j < len(toks) and toks[j] != "!" and not toks[j].startswith("-"):
                vals.append(toks[j])
                j += 1
            if inv:
                vals = ["!" + (vals[0] if vals else "")] + vals[1:]
            got.append((key, vals[0] if len(vals) == 1 else vals if vals else ""))
        return tuple(got), j

    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            neg, i = True, i + 1
            continue
        if tok in flags and i + 1 < len(toks):
            out[flags[tok]] = ("!" if neg else "") + toks[i + 1]
            neg, i = False, i + 2
        elif tok == "-m" and i + 1 < len(toks) and not neg:
            name = toks[i + 1]
            ps, i = params(i + 2)
            matches.append((name, ps))
        elif tok == "-j" and i + 1 < len(toks) and not neg:
            target = toks[i + 1]
            tparams, i = params(i + 2)
        else:
            raise UnavailableError(f"cannot read rule {' '.join(toks)!r} at {tok!r}")
    return Fields(**out, matches=tuple(matches), target=target, target_params=tparams)


def spec_fields(spec: Any) -> Fields:
    """Fields of a portmap.RuleSpec: its matches, then the comment match, then the target."""
    matches = tuple(
        (name, tuple((k.replace("_", "-"), str(v)) for k, v in ps)) for name, ps in spec.matches
    )
    return Fields(
        src=spec.src,
        dst=spec.dst,
        in_=spec.in_,
        out=spec.out,
        proto=spec.proto,
        matches=matches + (("comment", (("comment", spec.comment),)),),
        target=spec.target,
        target_params=tuple((k.replace("_", "-"), str(v)) for k, v in spec.target_params),
    )


def _build(iptc: Any, f: Fields, family: int) -> Any:
    rule = iptc.Rule() if family == 4 else iptc.Rule6()
    if f.src:
        rule.src = f.src
    if f.dst:
        rule.dst = f.dst
    if f.in_:
        rule.in_interface = f.in_
    if f.out:
        rule.out_interface = f.out
    if f.proto:
        rule.protocol = f.proto
    for name, ps in f.matches:
        match = rule.create_match(name)
        for key, value in ps:
            match.set_parameter(key, value)
    target = _target(iptc, rule, f.target)
    for key, value in f.target_params:
        target.set_parameter(key, value)
    rule.final_check()
    return rule


def _target(iptc: Any, rule: Any, name: str) -> Any:
    """rule.create_target(name) without python-iptables' own jump test, which opens every
    table of its process-wide cache (autocommit on) to see whether `name` is a chain: a
    name that is neither a verdict nor an extension is a jump to a user chain."""
    classes = _state.get("targets")
    if classes is None:

        class Extension(iptc.Target):
            def _is_standard_target(self) -> bool:
                return False

        class Jump(iptc.Target):
            def _is_standard_target(self) -> bool:
                return True

        classes = _state["targets"] = (Extension, Jump)
    jump = name not in iptc.Target.STANDARD_TARGETS and not iptc.xtables.xtables(
        rule.nfproto
    ).find_target(name)
    target = classes[jump](rule, name=name)
    rule.target = target
    return target


@contextlib.contextmanager
def xt_lock(timeout: float = 30.0) -> Iterator[None]:
    """The x_tables writers' lock (`iptables-legacy -w` waits for it too)."""
    path = os.environ.get("XTABLES_LOCKFILE", XT_LOCK)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UnavailableError(f"{path} is held by another x_tables writer") from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def apply(changes: Sequence[TableOps], family: int = 4) -> None:
    """Write `changes` (one TableOps per table) with libiptc: one commit per table.
    Raises UnavailableError naming the table and rule that failed.

    The work runs in a forked child: libxtables keeps one process-wide extension
    registry, and an extension library first loaded for one family is not registered
    for the other (an IPv6 DNAT after an IPv4 one is "can't find target DNAT", and
    registering it again makes libxtables exit()). Each child loads the extensions
    of its own family only; the parent has imported python-iptables once."""
    iptc, why = load()
    if iptc is None:
        raise UnavailableError(f"python-iptables unavailable: {why}")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(rfd)
            try:
                _apply(iptc, changes, family)
            except UnavailableError as exc:
                code = 1
                os.write(wfd, json.dumps([exc.message, exc.hint]).encode())
            except BaseException as exc:  # noqa: BLE001 reported to the parent
                code = 2
                os.write(
                    wfd,
                    json.dumps([f"python-iptables: {type(exc).__name__}: {exc}", None]).encode(),
                )
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        message, hint = (
            json.loads(report)
            if report
            else (
                f"python-iptables writer exited with status {os.waitstatus_to_exitcode(status)}",
                None,
            )
        )
        raise UnavailableError(message, hint=hint)


def _apply(iptc: Any, changes: Sequence[TableOps], family: int) -> None:
    errors = (iptc.IPTCError, iptc.XTablesError, ValueError, TypeError, AttributeError)
    built = []
    for ch in changes:  # every rule first: a bad one changes no table
        try:
            dels = [(c, f, _build(iptc, f, family)) for c, f in ch.deletes]
            adds = [(c, f, ins, _build(iptc, f, family)) for c, f, ins in ch.adds]
        except errors as exc:
            raise UnavailableError(f"python-iptables: bad rule in {ch.table}: {exc}") from None
        built.append((ch, dels, adds))
    cls = iptc.Table if family == 4 else iptc.Table6
    with xt_lock():
        for ch, dels, adds in built:
            step = f"{ch.table}"
            try:
                # python-iptables keeps one Table per name: refresh() takes a new handle
                # (snapshot and socket) in this network namespace, close() drops it
                table = cls(ch.table, autocommit=False)
                table.refresh()
            except errors as exc:
                raise UnavailableError(f"python-iptables: cannot open {ch.table}: {exc}") from None
            try:
                for name in ch.new_chains:
                    step = f"{ch.table} -N {name}"
                    table.create_chain(name)
                # Table's entry calls, not Chain's *_rule(): those run final_check()
                # (a save and re-parse of every parameter) again, _build() did it
                for chain, f, rule in dels:
                    step = f"{ch.table} -D {chain} {_show(f)}"
                    table.delete_entry(chain, rule.rule, rule.mask)
                for chain, f, insert, rule in adds:
                    step = f"{ch.table} {'-I' if insert else '-A'} {chain} {_show(f)}"
                    if insert:
                        table.insert_entry(chain, rule.rule, 0)
                    else:
                        table.append_entry(chain, rule.rule)
                for name in ch.drop_chains:
                    step = f"{ch.table} -X {name}"
                    table.delete_chain(name)
                step = f"{ch.table} commit"
                table.commit()
            except errors as exc:
                raise UnavailableError(
                    f"python-iptables failed: {step}: {exc}",
                    hint="are the iptables modules (nat, conntrack, addrtype) available?",
                ) from None
            finally:
                table.close()  # autocommit is off: nothing uncommitted is written


def _show(f: Fields) -> str:
    parts = [
        f"{k}={v}"
        for k, v in (("s", f.src), ("d", f.dst), ("i", f.in_), ("o", f.out), ("p", f.proto))
        if v
    ]
    parts += [f"-m {n}" for n, _ in f.matches if n != "comment"]
    return " ".join(parts + [f"-j {f.target}"])[:200]
