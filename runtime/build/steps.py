"""Executors of the filesystem-changing steps: RUN in a pyinspect container, COPY/ADD and
WORKDIR in a chrooted child over a fresh upper dir. Each returns the diff_id of the
layer it stored, or None when the step changed nothing.
"""

import os
import shutil

from pyinspect.errors import PyinspectError, UsageError

from . import copier, layerdiff, rootfs

BUILD_CONTAINER_PREFIX = "pyinspect-build-"


class Scratch:
    """The build's private directory `<root>/build/tmp/<pid>-<rand>` (removed at the end;
    one left by a killed build is removed by the next build)."""

    def __init__(self, root):
        self.base = os.path.join(os.fspath(root), "build", "tmp")
        os.makedirs(self.base, exist_ok=True)
        self._sweep()
        self.path = os.path.join(self.base, f"{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(self.path)
        self.n = 0

    def _sweep(self):
        from pyinspect.proc import pid_alive

        for entry in os.listdir(self.base):
            pid = entry.split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(os.path.join(self.base, entry), ignore_errors=True)

    def new_dir(self, what: str) -> str:
        self.n += 1
        d = os.path.join(self.path, f"{self.n}-{what}")
        os.mkdir(d)
        return d

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _store_layer(store, scratch, upper, lower_dirs, skip_runtime_files):
    tar = os.path.join(scratch.path, f"layer-{os.urandom(4).hex()}.tar")
    try:
        if layerdiff.write_layer(upper, lower_dirs, tar, skip_runtime_files) == 0:
            return None
        return store.add_layer(tar)
    finally:
        if os.path.exists(tar):
            os.unlink(tar)


def _overlay_dirs(scratch, what):
    d = scratch.new_dir(what)
    upper, work = os.path.join(d, "upper"), os.path.join(d, "work")
    os.mkdir(upper)
    os.mkdir(work)
    return d, upper, work


def workdir(store, scratch: Scratch, lower_dirs: list, path: str) -> str | None:
    """Create `path` (and its parents) in the image if missing; a diff_id or None."""
    d, upper, work = _overlay_dirs(scratch, "workdir")
    try:
        rootfs.run(scratch.path, lower_dirs, lambda: os.makedirs(path, exist_ok=True), upper, work)
        return _store_layer(store, scratch, upper, lower_dirs, False)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def copy(
    store,
    scratch: Scratch,
    lower_dirs: list,
    dest: str,
    sources: list | None = None,
    ignore=None,
    from_dirs: list | None = None,
    patterns: list | tuple = (),
    chown: str | None = None,
    chmod: str | None = None,
    unpack: bool = False,
) -> str | None:
    """COPY/ADD into `dest`: context `sources` (resolved), or `patterns` read inside the
    image whose layers are `from_dirs`. A diff_id or None."""
    d, upper, work = _overlay_dirs(scratch, "copy")
    r, w = os.pipe()
    still_open = {r, w}  # pipe ends this process has not closed yet
    handles: list[rootfs.Child] = []

    def close(fd):
        still_open.discard(fd)
        os.close(fd)

    try:

        def receive():
            os.close(w)
            with os.fdopen(r, "rb") as inp:
                copier.receive(inp, dest, chown, chmod)

        handles.append(rootfs.start(scratch.path, lower_dirs, receive, upper, work))
        close(r)
        if from_dirs is not None:

            def send():
                srcs = copier.resolve("/", patterns, in_context=False)
                with os.fdopen(w, "wb") as out:
                    copier.send(srcs, out, unpack=unpack)

            handles.append(rootfs.start(scratch.path, from_dirs, send))
            close(w)
        else:
            assert sources is not None
            still_open.discard(w)  # the file object below owns it now
            try:
                with os.fdopen(w, "wb") as out:
                    copier.send(sources, out, ignore, unpack)
            except BrokenPipeError:
                pass  # the receiver failed: it says why
        errors = []
        for h in reversed(handles):  # the sender first: its error is the cause
            try:
                rootfs.finish(h)
            except rootfs.ChildFailed as exc:
                errors.append(exc)
        handles = []
        if errors:
            raise errors[0]
        return _store_layer(store, scratch, upper, lower_dirs, False)
    finally:
        for fd in list(still_open):
            close(fd)
        for h in handles:
            rootfs.kill(h)
        shutil.rmtree(d, ignore_errors=True)


def _image_lines(lower_dirs, rel):
    found = layerdiff.lower_path([os.fspath(d) for d in lower_dirs], tuple(rel.split("/")))
    if not found or not os.path.isfile(found[0]) or os.path.islink(found[0]):
        return []
    with open(found[0], encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n").split(":") for line in f]


def numeric_user(lower_dirs: list, user: str) -> str:
    """USER as `uid:gid`, names looked up in the image's /etc/passwd and /etc/group
    (the runtime runs only numeric users); UsageError when a name is not there."""
    name, _, group = user.partition(":")
    passwd = _image_lines(lower_dirs, "etc/passwd")
    entry = next(
        (e for e in passwd if len(e) > 3 and (e[0] == name or (name.isdigit() and e[2] == name))),
        None,
    )
    if name.isdigit():
        uid = int(name)
    elif entry:
        uid = int(entry[2])
    else:
        raise UsageError(
            f"unable to find user {name}: no matching entries in the image's passwd file"
        )
    if not group:
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    elif group.isdigit():
        gid = int(group)
    else:
        match = next(
            (e for e in _image_lines(lower_dirs, "etc/group") if len(e) > 2 and e[0] == group), None
        )
        if match is None:
            raise UsageError(
                f"unable to find group {group}: no matching entries in the image's group file"
            )
        gid = int(match[2])
    return f"{uid}:{gid}"


def run(
    root, store, scratch: Scratch, state, argv: list, env: dict, on_output
) -> tuple[int, str | None]:
    """RUN `argv` in a pyinspect container of `state` on the bridge network; returns
    (exit code, diff_id or None). The container is always removed."""
    from pyinspect.runtime.containers import ContainerSpec, Runtime
    from pyinspect.runtime.images import Image

    rt = Runtime(root)
    settings = dict(state.settings)
    if settings.get("User"):
        settings["User"] = numeric_user(state.layer_dirs(store), settings["User"])
    image = Image(
        id=state.id,
        repo_tags=[],
        config=settings,
        layer_dirs=[_p(x) for x in state.layer_dirs(store)],
        created=state.config.get("created", ""),
        size=0,
        diff_ids=state.diff_ids,
        raw=state.config,
    )
    name = f"{BUILD_CONTAINER_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    spec = ContainerSpec(
        image=state.id,
        command=list(argv),
        entrypoint="",
        name=name,
        env=[f"{k}={v}" for k, v in env.items()],
        network_mode="bridge",
    )
    c = None
    try:
        c = rt.run(spec, detach=True, image=image)
        for stream, data in rt.logs(c.id, follow=True):
            on_output(stream, data)
        c = rt.get(c.id)
        if c.exit_code != 0:
            return c.exit_code, None
        return 0, _store_layer(
            store, scratch, os.path.join(c.path, "upper"), state.layer_dirs(store), True
        )
    finally:
        try:
            rt.remove(c.id if c else name, force=True, volumes=True)
        except PyinspectError:
            pass


def _p(path):
    from pathlib import Path

    return Path(path)


def sweep_containers(root) -> None:
    """Remove build containers left by killed builds (their builder pid is gone)."""
    from pyinspect.proc import pid_alive
    from pyinspect.runtime import state as cstate
    from pyinspect.runtime.containers import Runtime

    try:
        names = os.listdir(cstate.names_dir(os.fspath(root)))
    except FileNotFoundError:
        return
    rt = None
    for name in names:
        if not name.startswith(BUILD_CONTAINER_PREFIX):
            continue
        pid = name[len(BUILD_CONTAINER_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            rt = rt or Runtime(root)
            try:
                rt.remove(name, force=True, volumes=True)
            except PyinspectError:
                pass
