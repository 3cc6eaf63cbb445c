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
