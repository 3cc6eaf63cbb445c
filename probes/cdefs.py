"""Integer constants of the BPF programs' headers, read by their loaders from the header
itself, so each constant is written once (in C) and Python cannot drift from it."""

import functools
import re
from pathlib import Path

_DEFINE = re.compile(
    r"^\s*#define\s+([A-Z_][A-Z0-9_]*)\s+(\(?\s*[-+0-9xXa-fA-FuUlL()\s+*<>|]+?\)?)"
    r"\s*(?://.*|/\*.*)?$"
)
_SAFE = re.compile(r"^[-+0-9xXa-fA-FuUlL()\s*<>|]+$")


@functools.cache
def defines(header: Path) -> dict[str, int]:
    """{NAME: value} of the `#define NAME <integer expression>` lines of `header`
    (decimal or hex literals, + - * << >> | and parentheses); other defines are skipped."""
    out: dict[str, int] = {}
    for line in Path(header).read_text().splitlines():
        m = _DEFINE.match(line)
        if not m or not _SAFE.match(m.group(2)):
            continue
        expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", m.group(2))
        try:
            out[m.group(1)] = int(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 - literals only
        except (SyntaxError, ValueError, TypeError, NameError):
            continue
    return out


def require(header: Path, *names: str) -> tuple[int, ...]:
    """The values of `names` in `header`, in order; KeyError naming a missing one."""
    found = defines(header)
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"{Path(header).name} defines no {', '.join(missing)}")
    return tuple(found[n] for n in names)
