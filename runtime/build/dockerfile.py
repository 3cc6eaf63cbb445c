"""Dockerfile text -> typed instructions with their line numbers.

Splitting into instructions (line continuations, comments, the `# escape=` parser
directive, JSON vs shell form, `--flag`s) is done by the `dockerfile` package, which
wraps Docker's own Go parser, so pyinspect reads a Dockerfile exactly as Docker does.
This module checks what that parser leaves to the builder: known instructions, their
argument counts, the flags each accepts, and BuildKit-only syntax (heredocs,
`RUN --mount`), which pyinspect refuses with one line.
"""

import re
from dataclasses import dataclass, field

from pyinspect.errors import UsageError

SUPPORTED = (
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "ENV",
    "ARG",
    "LABEL",
    "EXPOSE",
    "USER",
    "VOLUME",
    "STOPSIGNAL",
    "CMD",
    "ENTRYPOINT",
    "SHELL",
    "MAINTAINER",
    "HEALTHCHECK",
    "ONBUILD",
)
NOT_SUPPORTED: tuple[str, ...] = ()
# flags each instruction accepts (name -> takes a value)
FLAGS = {
    "FROM": {"platform"},
    "COPY": {"from", "chown", "chmod", "link"},
    "ADD": {"chown", "chmod", "link"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
BUILDKIT_FLAGS = {
    "RUN": ("mount", "network", "security"),
    "COPY": ("parents", "exclude"),
    "ADD": ("checksum", "keep-git-dir", "exclude"),
}


class DockerfileError(UsageError):
    """A Dockerfile that cannot be built as written (the message names its line)."""


@dataclass
class Instruction:
    """One instruction: `cmd` upper case, `args` as the parser split them."""

    cmd: str
    args: list
    line: int
    original: str
    json: bool = False
    flags: dict = field(default_factory=dict)

    def error(self, why: str, hint: str | None = None) -> "DockerfileError":
        return DockerfileError(f"Dockerfile line {self.line}: {self.cmd}: {why}", hint)


def _parse_flags(cmd, raw, line):
    out = {}
    for text in raw:
        m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.*))?", text, re.DOTALL)
        if not m:
            raise DockerfileError(f"Dockerfile line {line}: {cmd}: bad flag {text!r}")
        name, value = m.group(1), m.group(2)
        if name in BUILDKIT_FLAGS.get(cmd, ()):
            raise DockerfileError(
                f"Dockerfile line {line}: {cmd} --{name} is BuildKit-only "
                f"syntax, which pyinspect build does not support"
            )
        if name not in FLAGS.get(cmd, ()):
            raise DockerfileError(f"Dockerfile line {line}: {cmd}: unknown flag --{name}")
        if value is None and name != "link":
            raise DockerfileError(
                f"Dockerfile line {line}: {cmd}: --{name} needs a value (--{name}=VALUE)"
            )
        out[name] = value if value is not None else "true"
    return out


def _error_line(text):
    """The first line at which Docker's parser fails (bisected over line prefixes)."""
    import dockerfile

    lines = text.splitlines(keepends=True)
    lo, hi = 1, len(lines)
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            dockerfile.parse_string("".join(lines[:mid]))
            lo = mid + 1
        except dockerfile.GoParseError:
            hi = mid
    return lo


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile's text; DockerfileError names the bad line."""
    try:
        import dockerfile
    except ImportError:  # pragma: no cover - installed by setup.cfg
        from pyinspect.errors import UnavailableError

        raise UnavailableError("the dockerfile package is not installed", "make install") from None
    if "\0" in text:
        raise DockerfileError("Dockerfile: contains a NUL byte (not a text file)")
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise DockerfileError(f"Dockerfile line {_error_line(text)}: {exc}") from None
    out = []
    for c in commands:
        cmd = c.cmd.upper()
        line = c.start_line
        if cmd in NOT_SUPPORTED:
            raise DockerfileError(
                f"Dockerfile line {line}: {cmd} is not supported by pyinspect build"
            )
        if cmd not in SUPPORTED:
            raise DockerfileError(f"Dockerfile line {line}: unknown instruction: {c.cmd}")
        if c.heredocs:
            raise DockerfileError(
                f"Dockerfile line {line}: {cmd}: heredocs (<<EOF) are "
                f"BuildKit-only syntax, which pyinspect build does not "
                f"support"
            )
        if cmd == "ONBUILD":
            out.append(_onbuild(c, line))
            continue
        ins = Instruction(
            cmd=cmd,
            args=list(c.value),
            line=line,
            original=c.original,
            json=bool(c.json),
            flags=_parse_flags(cmd, c.flags, line),
        )
        _check_arity(ins)
        out.append(ins)
    if not out:
        raise DockerfileError("Dockerfile: no instructions", "a Dockerfile starts with FROM")
    return out


def _onbuild(c, line):
    """An ONBUILD instruction; its one arg is the trigger's text, checked like a line."""
    sub = (c.sub_cmd or "").upper()
    if sub in ("ONBUILD", "FROM", "MAINTAINER", ""):
        raise DockerfileError(
            f"Dockerfile line {line}: ONBUILD {sub or '(nothing)'} is not allowed as a trigger"
        )
    trigger = c.original.split(None, 1)[1]
    trigger_instruction(trigger, line)
    return Instruction(cmd="ONBUILD", args=[trigger], line=line, original=c.original)


def trigger_instruction(trigger: str, line: int) -> Instruction:
    """The Instruction of an ONBUILD trigger's text; errors name `line` (where the trigger
    was declared, or the FROM that runs it)."""
    try:
        (ins,) = parse("FROM scratch\n" + trigger + "\n")[1:]
    except DockerfileError as exc:
        msg = exc.message.replace("Dockerfile line 2: ", "", 1)
        raise DockerfileError(f"Dockerfile line {line}: ONBUILD trigger: {msg}") from None
    except ValueError:
        raise DockerfileError(
            f"Dockerfile line {line}: ONBUILD: one instruction expected"
        ) from None
    ins.line = line
    return ins


def _check_arity(ins):
    n = len([a for a in ins.args if a != ""]) if not ins.json else len(ins.args)
    cmd = ins.cmd
    if cmd == "HEALTHCHECK":
        kind = ins.args[0].upper() if ins.args else ""
        if kind == "NONE" and len(ins.args) == 1 and not ins.flags:
            return
        if kind != "CMD" or len([a for a in ins.args[1:] if a != ""]) == 0:
            raise ins.error("expected HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE")
        return
    if cmd in ("RUN", "CMD", "ENTRYPOINT", "SHELL") and ins.json:
        if cmd == "SHELL" and n == 0:
            raise ins.error("needs at least one argument")
        return
    if cmd == "SHELL":
        raise ins.error("must be a JSON array", 'SHELL ["/bin/sh", "-c"]')
    if cmd == "FROM":
        if n not in (1, 3) or (n == 3 and ins.args[1].upper() != "AS"):
            raise ins.error("expected FROM [--platform=P] IMAGE [AS NAME]")
    elif cmd in ("COPY", "ADD"):
        if n < 2:
            raise ins.error("needs a source and a destination")
    elif cmd in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER"):
        if n != 1:
            raise ins.error("needs exactly one argument")
    elif cmd in ("EXPOSE", "VOLUME", "ARG", "ENV", "LABEL"):
        if n < 1:
            raise ins.error("needs at least one argument")
    elif cmd in ("RUN", "CMD", "ENTRYPOINT") and n == 0:
        raise ins.error("needs a command")


# ---- word expansion ($VAR, ${VAR:-default}, quotes), as Docker's shell lexer -------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(word: str, env: dict, escape: str = "\\", line: int | None = None) -> str:
    """Docker's word processing: quotes removed, `$VAR`/`${VAR}` and the `:-` `-` `:+` `+`
    `:?` `?` forms substituted from `env` (a dict); an escaped `$` stays literal."""
    out = []
    i, n = 0, len(word)
    quote = None
    while i < n:
        ch = word[i]
        if ch == escape and quote != "'":
            if i + 1 < n:
                nxt = word[i + 1]
                if quote == '"' and nxt not in ('"', "$", escape):
                    out.append(ch)
                out.append(nxt)
                i += 2
            else:
                out.append(ch)
                i += 1
            continue
        if ch in "'\"" and quote is None:
            quote = ch
            i += 1
            continue
        if quote is not None and ch == quote:
            quote = None
            i += 1
            continue
        if ch == "$" and quote != "'":
            value, i = _dollar(word, i + 1, env, escape, line)
            out.append(value)
            continue
        out.append(ch)
        i += 1
    if quote is not None:
        where = f"Dockerfile line {line}: " if line else ""
        raise DockerfileError(f"{where}unmatched {quote} in {word!r}")
    return "".join(out)


def _dollar(word, i, env, escape, line):
    n = len(word)
    if i < n and word[i] == "{":
        end = _closing_brace(word, i + 1)
        if end < 0:
            where = f"Dockerfile line {line}: " if line else ""
            raise DockerfileError(f"{where}missing '}}' in {word!r}")
        inner = word[i + 1 : end]
        m = _NAME.match(inner)
        if not m:
            where = f"Dockerfile line {line}: " if line else ""
            raise DockerfileError(f"{where}bad substitution ${{{inner}}} in {word!r}")
        name, rest = m.group(0), inner[m.end() :]
        value = env.get(name)
        if rest == "":
            return value or "", end + 1
        for op in (":-", ":+", ":?", "-", "+", "?"):
            if rest.startswith(op):
                arg = expand(rest[len(op) :], env, escape, line)
                colon = op.startswith(":")
                unset = value is None or (colon and value == "")
                if op.endswith("-"):
                    return (arg if unset else value), end + 1
                if op.endswith("+"):
                    return ("" if unset else arg), end + 1
                if unset:
                    where = f"Dockerfile line {line}: " if line else ""
                    raise DockerfileError(f"{where}{name}: {arg or 'is not set'}")
                return value, end + 1
        where = f"Dockerfile line {line}: " if line else ""
        raise DockerfileError(f"{where}unsupported substitution ${{{inner}}}")
    m = _NAME.match(word, i)
    if not m:
        return "$", i
    return env.get(m.group(0)) or "", m.end()


def _closing_brace(word, i):
    depth = 1
    while i < len(word):
        if word[i] == "{":
            depth += 1
        elif word[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1000,
    "µs": 1000,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def parse_duration(text: str) -> int:
    """A Go duration ('30s', '1m30s', '500ms') in nanoseconds; ValueError if malformed."""
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m:
            raise ValueError(text)
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError(text)
    return int(total)


def healthcheck(ins: Instruction) -> dict:
    """The image config's Healthcheck for a HEALTHCHECK instruction (Docker's fields)."""
    if ins.args[0].upper() == "NONE":
        return {"Test": ["NONE"]}
    if ins.json:
        test = ["CMD", *ins.args[1:]]
    else:
        test = ["CMD-SHELL", " ".join(a for a in ins.args[1:] if a != "")]
    out: dict = {"Test": test}
    for flag, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ):
        if flag in ins.flags:
            try:
                value = parse_duration(ins.flags[flag])
            except ValueError:
                raise ins.error(
                    f"--{flag}={ins.flags[flag]}: not a duration such as 30s or 1m30s"
                ) from None
            if value < 0 or (value and value < 10**6 and flag != "start-period"):
                raise ins.error(f"--{flag}={ins.flags[flag]}: must be at least 1ms")
            out[key] = value
    if "retries" in ins.flags:
        retries = ins.flags["retries"]
        if not retries.isdigit():
            raise ins.error(f"--retries={retries}: not a number")
        out["Retries"] = int(retries)
    return out


def escape_char(text: str) -> str:
    """The escape character the `# escape=` directive chose (backslash by default)."""
    for raw in text.lstrip("\ufeff").splitlines():
        line = raw.strip()
        if not line.startswith("#"):
            break
        m = re.fullmatch(r"#\s*([A-Za-z]+)\s*=\s*(.*?)\s*", line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            return m.group(2) or "\\"
    return "\\"


def key_values(ins: Instruction, env: dict, escape: str) -> list[tuple[str, str]]:
    """ENV / LABEL arguments as [(key, value)], expanded (values see `env` as it was)."""
    args = ins.args
    if len(args) % 2:
        raise ins.error("expected KEY=VALUE pairs")
    pairs = []
    for k, v in zip(args[0::2], args[1::2], strict=True):
        key = expand(k, env, escape, ins.line)
        if not key:
            raise ins.error("empty key")
        pairs.append((key, expand(v, env, escape, ins.line)))
    return pairs
