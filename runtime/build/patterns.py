"""Docker's path patterns: `.dockerignore` rules and COPY/ADD source globs.

Patterns follow Go's filepath.Match (`*` and `?` never cross a `/`, `[a-z]` classes,
`\\` escapes) plus Docker's `**` (any number of directories). A `.dockerignore` rule
excludes a path when it matches the path or one of its parent directories; `!` rules
re-include, and the last matching rule wins, as in Docker. Written here rather than
taken from pathspec: gitignore rules (which pathspec implements) differ from Docker's
(anchoring, parent-directory matching, `!` inside excluded directories).
"""

import os
import re
from dataclasses import dataclass

from pyinspect.errors import UsageError


def _clean(pattern: str) -> str:
    p = os.path.normpath(pattern.strip()) if pattern.strip() else ""
    p = p.lstrip("/")
    return "" if p == "." else p


def to_regex(pattern: str) -> re.Pattern:
    """A compiled regex for one cleaned Docker path pattern (whole-path match)."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] in "^!" else i + 1)
            if end < 0:
                raise UsageError(f"bad pattern {pattern!r}: unterminated [")
            body = pattern[i + 1 : end]
            if body[:1] in ("^", "!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif ch == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise UsageError(f"bad pattern {pattern!r}: {exc}") from None


def has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass
class Rule:
    pattern: str
    exclude: bool
    regex: re.Pattern[str]


class IgnoreRules:
    """The rules of one `.dockerignore` file."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.has_exceptions = any(not r.exclude for r in rules)

    @classmethod
    def parse(cls, text: str, origin: str = ".dockerignore") -> "IgnoreRules":
        rules = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = True
            if line.startswith("!"):
                exclude, line = False, line[1:].strip()
            pat = _clean(line)
            if not pat:
                continue
            try:
                rules.append(Rule(pat, exclude, to_regex(pat)))
            except UsageError as exc:
                raise UsageError(f"{origin} line {lineno}: {exc.message}") from None
        return cls(rules)

    @classmethod
    def load(cls, context: str) -> "IgnoreRules":
        path = os.path.join(context, ".dockerignore")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return cls.parse(f.read())
        except FileNotFoundError:
            return cls([])

    def excluded(self, rel: str) -> bool:
        """True when the context path `rel` (relative, '/'-separated) is ignored."""
        if not self.rules:
            return False
        parents = []
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            parents.append("/".join(parts[:i]))
        result = False
        for rule in self.rules:
            if any(rule.regex.match(p) for p in parents):
                result = rule.exclude
        return result
