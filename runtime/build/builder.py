"""`build(root, options, progress)`: run a Dockerfile's stages step by step and store the
target stage's image.

Every step goes through the cache (key: parent state + the step's inputs). On a miss,
metadata steps derive a new config, filesystem steps (RUN, COPY, ADD, WORKDIR that
creates a directory) store one layer. Only a finished build records and tags an image:
a failing step leaves no tagged image, and its container and scratch files are removed.
"""

import json
import os
import re
import time
from dataclasses import dataclass, field

from pyinspect.errors import NotFoundError, PyinspectError, UsageError

from . import configsteps, dockerfile, planner, steps
from .cache import BuildCache, step_key
from .patterns import IgnoreRules
from .state import ImageState

_MAX_DOCKERFILE = 4 << 20
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)", re.IGNORECASE)


# the classic builder's created_by of a step that makes no layer ("/bin/sh -c #(nop) " and
# a space before the instruction, as `docker history` shows them; WORKDIR, COPY and ADD
# have no second space)
NOP = "/bin/sh -c #(nop) "


@dataclass
class BuildOptions:
    """What `pyinspect build` was asked for."""

    context: str
    dockerfile: str | None = None  # path; default <context>/Dockerfile
    tags: list = field(default_factory=list)
    target: str | None = None
    build_args: list = field(default_factory=list)  # ["K=V", ...]
    no_cache: bool = False


@dataclass
class BuildResult:
    image_id: str
    tags: list
    steps: int
    cached: int


class Progress:
    """What a build reports; the CLI prints it (methods do nothing here)."""

    def step(self, n: int, total: int, text: str) -> None:
        pass

    def cached(self, state_id: str) -> None:
        pass

    def output(self, stream: str, data: bytes) -> None:
        pass

    def done(self, state_id: str, seconds: float) -> None:
        pass

    def warning(self, text: str) -> None:
        pass


class StepFailed(PyinspectError):
    """A RUN step's command exited non-zero."""


class Interrupted(PyinspectError):
    """The build was stopped by a signal (what it had made is cleaned up)."""

    exit_code = 143


@dataclass
class _StageRun:
    index: int  # the stage's index in the Dockerfile
    state: ImageState
    args: dict  # ARG values in scope (None: declared, no value)
    cmd_set: bool = False  # a CMD came in this stage (ENTRYPOINT keeps it)


def _read_dockerfile(opts):
    path = opts.dockerfile or os.path.join(opts.context, "Dockerfile")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_DOCKERFILE + 1)
    except FileNotFoundError:
        raise NotFoundError(f"Dockerfile {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"Dockerfile {path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"Dockerfile {path}: {exc.strerror}") from None
    if len(data) > _MAX_DOCKERFILE:
        raise UsageError(f"Dockerfile {path}: larger than {_MAX_DOCKERFILE >> 20} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"Dockerfile {path}: not UTF-8 text") from None


class Builder:
    def __init__(self, root, opts, progress=None):
        from pyinspect.runtime.images import ImageStore, parse_reference

        self.root = os.fspath(root)
        self.opts = opts
        self.progress = progress or Progress()
        self.store = ImageStore(self.root)
        self.cache = BuildCache(self.root, self.store)
        self.tags = [parse_reference(t) for t in opts.tags]
        if not os.path.isdir(opts.context):
            raise NotFoundError(f"build context {opts.context}: no such directory")
        self.context = os.path.realpath(opts.context)
        self.build_args = planner.parse_build_args(opts.build_args)
        self.used_args = set()
        self.n = 0
        self.cached = 0

    # ---- the whole build ----------------------------------------------------------------
    def build(self) -> BuildResult:
        text = _read_dockerfile(self.opts)
        self.escape = dockerfile.escape_char(text)
        instructions = dockerfile.parse(text)
        self.plan = planner.plan(instructions, self.build_args, self.opts.target, self.escape)
        self.ignore = IgnoreRules.load(self.context)
        steps.sweep_containers(self.root)
        self.scratch = steps.Scratch(self.root)
        try:
            finals: dict[int, ImageState] = {}
            for stage in self.plan.needed:
                finals[stage.index] = self._stage(stage, finals)
            final = finals[self.plan.target.index]
            unused = sorted(set(self.build_args) - self.used_args)
            if unused:
                self.progress.warning(f"build args not consumed by any ARG: {', '.join(unused)}")
            image = self.store.add_image(final.config_bytes, self.tags)
        finally:
            self.scratch.remove()
        return BuildResult(image_id=image.id, tags=self.tags, steps=self.n, cached=self.cached)

    # ---- one stage ----------------------------------------------------------------------
    def _base(self, stage, finals):
        dep = planner.find_stage(self.plan.stages, stage.base, stage.index)
        if dep is not None:
            return finals[dep.index]
        if stage.base.lower() == "scratch":
            return ImageState.scratch()
        return self._image_state(stage.base, stage.from_ins)

    def _image_state(self, ref, ins):
        try:
            image = self.store.resolve(ref)
        except NotFoundError:
            raise ins.error(
                f"{ref}: no such image",
                "pyinspect images lists them; pyinspect load -i FILE imports one",
            ) from None
        except UsageError as exc:
            raise ins.error(exc.message) from None
        with open(os.path.join(self.store.configs, f"{image.id[7:]}.json"), "rb") as f:
            return ImageState.from_bytes(f.read())

    def _stage(self, stage, finals):
        self.n += 1
        self.progress.step(self.n, self.plan.total_steps, stage.from_ins.original)
        st = _StageRun(index=stage.index, state=self._base(stage, finals), args={})
        self._triggers(st, stage.from_ins, finals)
        self.progress.done(st.state.id, 0)
        for ins in stage.steps:
            self.n += 1
            self.progress.step(self.n, self.plan.total_steps, ins.original)
            t0 = time.monotonic()
            self._run_step(st, ins, finals)
            self.progress.done(st.state.id, time.monotonic() - t0)
        return st.state

    def _run_step(self, st, ins, finals):
        try:
            self._step(st, ins, finals)
        except (dockerfile.DockerfileError, StepFailed, Interrupted):
            raise
        except PyinspectError as exc:
            raise ins.error(exc.message, exc.hint) from None
        except OSError as exc:  # a context file that vanished or cannot be read, ENOSPC...
            where = f"{exc.filename}: " if exc.filename else ""
            raise ins.error(f"{where}{exc.strerror or exc}") from None

    def _triggers(self, st, from_ins, finals):
        """Run the base image's ONBUILD triggers as the first steps of the stage (their
        errors name the FROM line); the stage's image does not inherit them."""
        triggers = list(st.state.settings.get("OnBuild") or [])
        if not triggers:
            return
        settings = dict(st.state.settings)
        settings["OnBuild"] = None
        self._cached_or(
            st,
            from_ins,
            ["ONBUILD-RESET", triggers],
            lambda: st.state.derive(f"{NOP} ONBUILD triggers run", settings),
        )
        for text in triggers:
            ins = dockerfile.trigger_instruction(text, from_ins.line)
            self.progress.output("stdout", f"# Executing build trigger: {text}\n".encode())
            self._run_step(st, ins, finals)

    def _scope(self, st):
        env = {k: v for k, v in st.args.items() if v is not None}
        env.update(st.state.env())
        return env

    def _step(self, st, ins, finals):
        env = self._scope(st)

        def x(word):
            return dockerfile.expand(word, env, self.escape, ins.line)

        cmd = ins.cmd
        if cmd == "ARG":
            for name, default in planner.arg_decl(ins, env, self.escape):
                if name in self.build_args:
                    value = self.build_args[name]
                    self.used_args.add(name)
                elif default is None and name in self.plan.global_args:
                    value = self.plan.global_args[name]
                else:
                    value = default
                st.args[name] = value
            self._cached_or(st, ins, ["ARG", sorted(st.args.items(), key=str)], lambda: st.state)
            return
        if cmd == "RUN":
            argv = list(ins.args) if ins.json else st.state.shell() + [ins.args[0]]
            run_env = {
                k: v for k, v in st.args.items() if v is not None and k not in st.state.env()
            }
            self._cached_or(
                st,
                ins,
                ["RUN", argv, sorted(run_env.items())],
                lambda: self._run(st, ins, argv, run_env),
            )
            return
        if cmd in ("COPY", "ADD"):
            self._copy(st, ins, x, finals)
            return
        if cmd not in configsteps.INSTRUCTIONS:  # pragma: no cover - the parser refuses the rest
            raise ins.error("not supported")
        step = configsteps.apply(
            st.state.settings, ins, env, self.escape, st.cmd_set, st.state.shell()
        )
        st.cmd_set = step.cmd_set
        settings = step.settings
        if cmd == "WORKDIR":
            path = settings["WorkingDir"]
            self._cached_or(
                st,
                ins,
                ["WORKDIR", path],
                lambda: st.state.derive(
                    f"{NOP}WORKDIR {path}",
                    settings,
                    steps.workdir(self.store, self.scratch, st.state.layer_dirs(self.store), path),
                ),
            )
            return
        by = step.created_by

        def make():
            s = st.state.derive(f"{NOP} {by}", settings)
            if step.author is None:
                return s
            s.config["author"] = step.author
            return ImageState.from_bytes(json.dumps(s.config).encode())

        self._cached_or(st, ins, [cmd, settings], make)

    def _cached_or(self, st, ins, parts, make):
        key = step_key(st.state.id, parts)
        if not self.opts.no_cache:
            hit = self.cache.get(key)
            if hit is not None:
                st.state = ImageState.from_bytes(hit)
                self.cached += 1
                self.progress.cached(st.state.id)
                return
        st.state = make()
        self.cache.put(key, st.state.config_bytes)

    # ---- RUN and COPY/ADD ---------------------------------------------------------------
    def _run(self, st, ins, argv, run_env):
        code, diff_id = steps.run(
            self.root, self.store, self.scratch, st.state, argv, run_env, self.progress.output
        )
        if code != 0:
            shown = " ".join(argv) if len(" ".join(argv)) < 200 else " ".join(argv)[:197] + "..."
            raise StepFailed(
                f"Dockerfile line {ins.line}: RUN: the command '{shown}' "
                f"returned a non-zero code: {code}"
            )
        return st.state.derive(" ".join(argv), diff_id=diff_id)

    def _copy(self, st, ins, x, finals):
        cmd = ins.cmd
        words = [x(a) for a in ins.args]
        srcs, dest_raw = words[:-1], words[-1]
        if not dest_raw:
            raise ins.error("empty destination")
        for s in srcs:
            if _REMOTE.match(s):
                raise ins.error(
                    f"{s}: remote URLs are not supported by pyinspect build (no network here)",
                    "download it into the context first",
                )
        wd = st.state.settings.get("WorkingDir") or "/"
        dest = dest_raw if dest_raw.startswith("/") else os.path.join(wd, dest_raw)
        if dest_raw.endswith(("/", "/.")) or dest_raw in (".", "./"):
            dest = os.path.normpath(dest) + ("/" if os.path.normpath(dest) != "/" else "")
        else:
            dest = os.path.normpath(dest)
        chown = x(ins.flags["chown"]) if "chown" in ins.flags else None
        chmod = x(ins.flags["chmod"]) if "chmod" in ins.flags else None
        if chmod is not None and not re.fullmatch(r"[0-7]{3,4}", chmod):
            raise ins.error(f"--chmod={chmod}: expected an octal mode such as 755")
        unpack = cmd == "ADD"
        lower = st.state.layer_dirs(self.store)
        if "from" in ins.flags:
            if cmd == "ADD":
                raise ins.error("--from is only for COPY")
            ref = x(ins.flags["from"])
            dep = planner.find_stage(self.plan.stages, ref, st.index)
            if dep is not None:
                src_state = finals[dep.index]
            else:
                try:
                    src_state = self._image_state(ref, ins)
                except dockerfile.DockerfileError:
                    raise ins.error(
                        f"--from={ref}: no stage or image of that name",
                        "stages: "
                        + (", ".join(s.name or str(s.index) for s in self.plan.stages) or "none"),
                    ) from None
            parts = [cmd, srcs, dest, chown, chmod, src_state.id]

            def make():
                diff_id = steps.copy(
                    self.store,
                    self.scratch,
                    lower,
                    dest,
                    from_dirs=src_state.layer_dirs(self.store),
                    patterns=srcs,
                    chown=chown,
                    chmod=chmod,
                    unpack=unpack,
                )
                return st.state.derive(
                    f"{cmd} --from={ref} {' '.join(srcs)} {dest}", diff_id=diff_id
                )
        else:
            from . import copier

            try:
                sources = copier.resolve(self.context, srcs, self.ignore)
            except UsageError as exc:
                raise ins.error(exc.message) from None
            digest = copier.digest(sources, self.ignore, unpack)
            parts = [cmd, srcs, dest, chown, chmod, digest]

            def make():
                diff_id = steps.copy(
                    self.store,
                    self.scratch,
                    lower,
                    dest,
                    sources=sources,
                    ignore=self.ignore,
                    chown=chown,
                    chmod=chmod,
                    unpack=unpack,
                )
                kind = "multi" if len(sources) > 1 else "dir" if sources[0].is_dir else "file"
                return st.state.derive(f"{NOP}{cmd} {kind}:{digest} in {dest} ", diff_id=diff_id)

        self._cached_or(st, ins, parts, make)


def build(root, opts: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build per `opts` under state root `root`; the BuildResult (the image is stored and
    tagged only when every step succeeded)."""
    return Builder(root, opts, progress).build()
