"""Small runtime helpers, without the kernel: atomic file replacement, the forked
child's report pipe, and reading container records that are damaged."""

import json
import os
import signal

import pytest

from pyinspect.runtime import child, state
from pyinspect.runtime.fsutil import atomic_write


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with atomic_write(target, "w", fsync=True) as f:
        f.write("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temp file left
    with atomic_write(tmp_path / "g", perms=0o640) as f:
        f.write(b"x")
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o640
    with pytest.raises(FileNotFoundError):  # cannot write there: raised before any write
        atomic_write(tmp_path / "missing" / "h")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "g"]


def _fork(body):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            code = body(w)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def test_child_report_and_exit_status():
    pid, r = _fork(lambda w: child.report(w, 127, 'exec: "x": not found') or 3)
    assert child.read_report(r) == ("127", 'exec: "x": not found')
    assert child.wait(pid) == 3
    pid, r = _fork(lambda w: 0)
    assert child.read_report(r) is None and child.wait(pid) == 0
    pid, r = _fork(lambda w: os.kill(os.getpid(), signal.SIGKILL))
    assert child.read_report(r) is None and child.wait(pid) == 128 + 9
    assert child.wait(pid) == 255  # already reaped


def _record(root, name, **dynamic):
    cid = os.urandom(32).hex()
    path = os.path.join(state.containers_dir(root), cid)
    os.makedirs(path)
    c = state.Container(
        id=cid,
        name=name,
        image="busybox",
        created=state.now_rfc3339(),
        spec=state.ContainerSpec(image="busybox", network_mode="none"),
        process={"argv": ["true"]},
        path=path,
        **dynamic,
    )
    state.save(c, static=True)
    os.makedirs(state.names_dir(root), exist_ok=True)
    os.symlink(cid, os.path.join(state.names_dir(root), name))
    return c


DAMAGES = {
    "empty config": ("config.json", b""),
    "config not utf-8": ("config.json", b'{"id": "\xff"}'),
    "config a list": ("config.json", b"[]"),
    "state a string": ("state.json", b'"running"'),
    "unknown status": ("state.json", b'{"status": "zombie"}'),
    "spec a list": ("config.json", None),
    "spec field": ("config.json", None),
    "name a number": ("config.json", None),
    "pid a string": ("state.json", b'{"status": "exited", "pid": "12"}'),
    "argv an int": ("config.json", None),
    "argv of numbers": ("config.json", None),
}


@pytest.mark.parametrize("what", sorted(DAMAGES))
def test_a_damaged_record_never_hides_the_others(tmp_path, what):
    root = str(tmp_path)
    good = _record(root, "pq-good", status="exited", exit_code=3)
    bad = _record(root, "pq-bad")
    fname, data = DAMAGES[what]
    if data is None:
        static = json.loads(open(os.path.join(bad.path, "config.json")).read())
        static.update(
            {
                "spec a list": {"spec": []},
                "spec field": {"spec": {"volumes": "x"}},
                "name a number": {"name": 7},
                "argv an int": {"process": {"argv": 5}},
                "argv of numbers": {"process": {"argv": [1, 2]}},
            }[what]
        )
        data = json.dumps(static).encode()
    with open(os.path.join(bad.path, fname), "wb") as f:
        f.write(data)
    assert [c.name for c in state.load_all(root)] == ["pq-good"]
    both = {c.id: c for c in state.load_all(root, damaged=True)}
    assert set(both) == {good.id, bad.id}
    assert both[good.id].status == "exited" and both[good.id].exit_code == 3
    d = both[bad.id]
    assert d.status == state.DAMAGED and d.name == "pq-bad" and fname in d.error
    assert "\n" not in d.error
    assert state.load(bad.path) is None and state.load(bad.path, damaged=True).id == bad.id
    assert state.load(str(tmp_path / "containers" / ("0" * 64)), damaged=True) is None
