"""Dockerfile instructions that change only the image config (ENV, LABEL, EXPOSE, USER,
VOLUME, STOPSIGNAL, CMD, ENTRYPOINT, SHELL, MAINTAINER, ONBUILD, HEALTHCHECK, and WORKDIR's
path), applied to a config's "config" part. `pyinspect build` and `commit --change` both
use them.
"""

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import dockerfile

_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.IGNORECASE)

# the instructions this module applies
INSTRUCTIONS = frozenset(
    "ENV LABEL EXPOSE USER VOLUME STOPSIGNAL CMD ENTRYPOINT SHELL MAINTAINER ONBUILD "
    "HEALTHCHECK WORKDIR".split()
)


def go_quoted(words) -> str:
    """Go's %q of a list of strings: ["cat" "/hi"]."""
    return "[" + " ".join(json.dumps(w, ensure_ascii=False) for w in words) + "]"


@dataclass
class ConfigStep:
    """The config part after one instruction, and what history says made it."""

    settings: dict
    created_by: str  # "ENV A=1", "CMD [\"sh\"]" (without the "#(nop)" prefix)
    cmd_set: bool  # a CMD was given in this stage (an ENTRYPOINT then keeps it)
    author: str | None = None  # MAINTAINER's name


def _env(settings: dict) -> dict:
    out = {}
    for item in settings.get("Env") or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def apply(
    settings: dict,
    ins: dockerfile.Instruction,
    env: dict,
    escape: str,
    cmd_set: bool,
    shell: list,
) -> ConfigStep:
    """Apply `ins` (one of INSTRUCTIONS) to a copy of `settings`; `env` expands its words."""

    def x(word: str) -> str:
        return dockerfile.expand(word, env, escape, ins.line)

    settings = dict(settings)
    cmd = ins.cmd
    author = None
    by: str
    if cmd == "ENV":
        cur = _env(settings)
        pairs = list(dockerfile.key_values(ins, env, escape))
        for k, v in pairs:
            cur[k] = v
        settings["Env"] = [f"{k}={v}" for k, v in cur.items()]
        by = "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
    elif cmd == "LABEL":
        labels = dict(settings.get("Labels") or {})
        pairs = list(dockerfile.key_values(ins, env, escape))
        labels.update(pairs)
        settings["Labels"] = labels
        by = "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
    elif cmd == "EXPOSE":
        settings["ExposedPorts"], words = _exposed(settings, ins, x)
        by = "EXPOSE " + " ".join(sorted(words))  # (Docker sorts them as text)
    elif cmd == "USER":
        settings["User"] = x(ins.args[0])
        by = f"USER {settings['User']}"
    elif cmd == "VOLUME":
        vols = dict(settings.get("Volumes") or {})
        words = ins.args if ins.json else [w for a in ins.args for w in a.split()]
        paths = [x(w) for w in words]
        for path in paths:
            if not path:
                raise ins.error("empty volume path")
            vols[path] = {}
        settings["Volumes"] = vols
        by = f"VOLUME [{' '.join(paths)}]"  # Go's %v of a list
    elif cmd == "STOPSIGNAL":
        sig = x(ins.args[0])
        from pyinspect.runtime.containers import parse_signal

        parse_signal(sig)
        settings["StopSignal"] = sig
        by = f"STOPSIGNAL {sig}"
    elif cmd in ("CMD", "ENTRYPOINT"):
        value = list(ins.args) if ins.json else list(shell) + [ins.args[0]]
        settings["Cmd" if cmd == "CMD" else "Entrypoint"] = value
        if cmd == "CMD":
            cmd_set = True
        elif not cmd_set:
            settings["Cmd"] = None  # an inherited CMD is reset by ENTRYPOINT
        by = f"{cmd} {go_quoted(value)}"
    elif cmd == "SHELL":
        settings["Shell"] = list(ins.args)
        by = f"SHELL [{' '.join(ins.args)}]"  # Go's %v of a list
    elif cmd == "MAINTAINER":
        author = x(ins.args[0])
        by = f"MAINTAINER {author}"
    elif cmd == "ONBUILD":
        settings["OnBuild"] = [*(settings.get("OnBuild") or []), ins.args[0]]
        by = f"ONBUILD {ins.args[0]}"
    elif cmd == "HEALTHCHECK":
        settings["Healthcheck"] = dockerfile.healthcheck(ins)
        by = f"HEALTHCHECK {settings['Healthcheck']}"
    elif cmd == "WORKDIR":
        path = x(ins.args[0])
        if not path:
            raise ins.error("empty path")
        if not path.startswith("/"):
            path = os.path.join(settings.get("WorkingDir") or "/", path)
        settings["WorkingDir"] = os.path.normpath(path)
        by = f"WORKDIR {settings['WorkingDir']}"
    else:  # pragma: no cover - callers pass INSTRUCTIONS only
        raise ins.error("not supported")
    return ConfigStep(settings, by, cmd_set, author)


def _exposed(settings: dict, ins: dockerfile.Instruction, x: Callable[[str], str]):
    ports = dict(settings.get("ExposedPorts") or {})
    words = [word for raw in ins.args for word in x(raw).split()]
    for word in words:
        m = _PORT.match(word)
        if not m or not 0 < int(m.group(1)) < 65536:
            raise ins.error(f"invalid port {word!r}", "e.g. EXPOSE 80 or 53/udp")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi > 65535:
            raise ins.error(f"invalid port range {word!r}")
        for p in range(lo, hi + 1):
            ports[f"{p}/{(m.group(3) or 'tcp').lower()}"] = {}
    return ports, words
