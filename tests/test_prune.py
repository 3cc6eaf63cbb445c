"""`container prune` and `image prune` on pyinspect's own (Docker's outputs:
test_docker_engine.py): what they keep (running, paused and restarting containers, the
images containers use) and `image prune -a`."""

import pytest

pytestmark = pytest.mark.root


def test_container_prune_keeps_what_runs(pc):
    pc("run", "-d", "--name", "pr-up", "--net", "none", "busybox", "sleep", "600")
    pc("run", "-d", "--name", "pr-paused", "--net", "none", "busybox", "sleep", "600")
    pc("pause", "pr-paused")
    pc("run", "-d", "--name", "pr-again", "--net", "none", "--restart", "always", "busybox",
       "sh", "-c", "sleep 0.2")  # fmt: skip
    pc(
        "run",
        "--name",
        "pr-done",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "head -c 5000 /dev/zero > /z",
    )
    done_id = pc.inspect("pr-done")["Id"]
    out = pc("container", "prune", "-f").stdout
    assert out == f"Deleted Containers:\n{done_id}\n\nTotal reclaimed space: 5kB\n"
    left = pc("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert sorted(left) == ["pr-again", "pr-paused", "pr-up"]
    assert pc("container", "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    pc("unpause", "pr-paused")


def test_image_prune_all_keeps_used_images(pc):
    pc("run", "--name", "pr-a", "--net", "none", "busybox", "sh", "-c", "echo a > /a")
    pc("commit", "pr-a", "pr-kept:1")
    pc("run", "--name", "pr-user", "--net", "none", "pr-kept:1", "true")  # uses pr-kept:1
    pc("run", "--name", "pr-b", "--net", "none", "busybox", "sh", "-c", "echo bb > /b")
    gone = pc("commit", "pr-b", "pr-gone:1").stdout.strip()
    # no dangling image: a plain prune removes nothing
    assert pc("image", "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    out = pc("image", "prune", "-a", "-f").stdout.splitlines()
    assert out[0] == "Deleted Images:" and out[-2:] == ["", "Total reclaimed space: 3B"]
    assert "untagged: pr-gone:1" in out and f"deleted: {gone}" in out
    # busybox is used by pr-a and pr-b, pr-kept:1 by pr-user: all kept
    assert not [line for line in out if "busybox" in line or "pr-kept" in line]
    assert pc("images", "-q", "pr-kept:1").stdout.strip()
    assert pc("run", "--rm", "--net", "none", "pr-kept:1", "cat", "/a").stdout == "a\n"
    # asked, and the answer is no (or none): nothing goes
    proc = pc("image", "prune", "-a", input="")
    assert proc.stdout.startswith("WARNING! This will remove all images without at least")
    assert pc("images", "-q", "pr-kept:1").stdout.strip()


def test_network_and_system_prune_keep_what_runs(make_netns, state_root):
    """A running container keeps its network; `system prune -a` removes the rest: the
    stopped container, the idle network, the image no container uses."""
    import json

    from conftest import Cli

    cli = Cli(state_root, netns=make_netns("pi-prn").name)
    try:
        cli("network", "create", "pr-keep")
        cli("network", "create", "pr-drop")
        cli("run", "-d", "--name", "pr-on", "--network", "pr-keep", "busybox", "sleep", "600")
        assert cli("network", "prune", "-f").stdout == "Deleted Networks:\npr-drop\n\n"
        names = [n["name"] for n in json.loads(cli("network", "ls", "--format", "json").stdout)]
        assert "pr-keep" in names and "pr-drop" not in names
        cli("run", "--name", "pr-off", "--net", "none", "busybox", "sh", "-c", "echo x > /x")
        off = json.loads(cli("inspect", "pr-off").stdout)[0]["Id"]
        cli("commit", "pr-off", "pr-unused:1")
        unused = json.loads(cli("inspect", "pr-unused:1").stdout)[0]["Id"]
        out = cli("system", "prune", "-a", "-f").stdout
        assert out == (
            f"Deleted Containers:\n{off}\n\nDeleted Images:\nuntagged: pr-unused:1\n"
            f"deleted: {unused}\n\nTotal reclaimed space: 4B\n"
        ), out
        # busybox stays: the running container uses it
        assert cli("images", "-q", "busybox").stdout.strip()
    finally:
        cli("rm", "-f", "pr-on", "pr-off", check=False)
        cli("network", "rm", "pr-keep", "pr-drop", check=False)
