"""Stages of a Dockerfile, the build args in scope, and which stages a target needs.

A stage starts at each FROM; `ARG`s before the first FROM are global and usable in
FROM lines (a stage sees one only after re-declaring it with `ARG NAME`). The target
(`--target`, else the last stage) needs its FROM stage and every `COPY --from` stage,
recursively; other stages are skipped, as BuildKit skips them.
"""

from dataclasses import dataclass, field

from pyinspect.errors import UsageError

from .dockerfile import DockerfileError, Instruction, expand


@dataclass
class Stage:
    """One stage: FROM's base (expanded), its name, its instructions after FROM."""

    index: int
    base: str
    name: str
    line: int
    from_ins: Instruction
    steps: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name or str(self.index)


@dataclass
class Plan:
    stages: list
    target: Stage
    needed: list  # stages to build, in Dockerfile order
    global_args: dict  # name -> value (None: declared without a value)
    build_args: dict
    escape: str

    @property
    def total_steps(self) -> int:
        return sum(1 + len(s.steps) for s in self.needed)


def parse_build_args(items: list | None) -> dict:
    """['K=V', 'K'] -> {K: V}; a bare K takes the value from this process's environment."""
    import os

    out = {}
    for item in items or ():
        k, eq, v = item.partition("=")
        if not k or any(c.isspace() for c in k):
            raise UsageError(f"--build-arg {item!r}: expected KEY=VALUE")
        if eq:
            out[k] = v
        elif k in os.environ:
            out[k] = os.environ[k]
    return out


def arg_decl(ins: Instruction, scope_env: dict, escape: str) -> list[tuple[str, str | None]]:
    """[(name, default or None)] of an ARG instruction."""
    out = []
    for raw in ins.args:
        if raw == "":
            continue
        name, eq, default = raw.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ins.error(f"invalid name {name!r}")
        out.append((name, expand(default, scope_env, escape, ins.line) if eq else None))
    return out


def plan(
    instructions: list[Instruction], build_args: dict, target: str | None = None, escape: str = "\\"
) -> Plan:
    """Split into stages and pick the ones the target needs; DockerfileError naming the
    line for a bad FROM, an unknown --target or a stage that refers forward."""
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            if "platform" in ins.flags:
                raise ins.error(
                    "--platform is not supported: pyinspect builds for this machine only"
                )
            scope = {k: build_args.get(k, v) for k, v in global_args.items()}
            scope = {k: v for k, v in scope.items() if v is not None}
            base = expand(ins.args[0], scope, escape, ins.line)
            if not base:
                raise ins.error("empty image name (an ARG without a value?)")
            name = ""
            if len(ins.args) == 3:
                name = ins.args[2].lower()
                if (
                    not name.replace("-", "a").replace("_", "a").replace(".", "a").isalnum()
                    or not name[0].isalpha()
                ):
                    raise ins.error(f"invalid stage name {ins.args[2]!r}")
                if any(s.name == name for s in stages):
                    raise ins.error(f"duplicate stage name {name!r}")
            stages.append(
                Stage(index=len(stages), base=base, name=name, line=ins.line, from_ins=ins)
            )
        elif not stages:
            if ins.cmd != "ARG":
                raise ins.error(
                    "only ARG may come before the first FROM", "a Dockerfile starts with FROM"
                )
            for k, v in arg_decl(ins, {}, escape):
                global_args[k] = v
        else:
            stages[-1].steps.append(ins)
    if not stages:
        raise DockerfileError("Dockerfile: no FROM instruction")
    if target:
        chosen = [s for s in stages if s.name == target.lower()]
        if not chosen:
            names = ", ".join(s.name for s in stages if s.name) or "none named"
            raise UsageError(
                f"--target {target}: no such stage in the Dockerfile (stages: {names})"
            )
        tgt = chosen[0]
    else:
        tgt = stages[-1]
    needed = set()

    def need(stage: Stage) -> None:
        if stage.index in needed:
            return
        needed.add(stage.index)
        dep = find_stage(stages, stage.base, stage.index)
        if dep is not None:
            need(dep)
        for ins in stage.steps:
            if ins.cmd == "COPY" and "from" in ins.flags:
                ref = ins.flags["from"]
                dep = find_stage(stages, ref, stage.index)
                if dep is not None:
                    need(dep)
                elif ref.isdigit():
                    raise ins.error(f"--from={ref}: no stage {ref} before this one")
                elif any(s.name == ref.lower() for s in stages):
                    raise ins.error(f"--from={ref}: stage {ref!r} comes after this one")

    need(tgt)
    return Plan(
        stages=stages,
        target=tgt,
        needed=[s for s in stages if s.index in needed],
        global_args=global_args,
        build_args=build_args,
        escape=escape,
    )


def find_stage(stages: list[Stage], ref: str, before: int) -> Stage | None:
    """The earlier stage a FROM or --from names (by name or index), else None (an image)."""
    if ref.isdigit():
        i = int(ref)
        return stages[i] if i < before else None
    for s in stages[:before]:
        if s.name and s.name == ref.lower():
            return s
    return None
