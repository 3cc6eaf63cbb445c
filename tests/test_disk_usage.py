"""`system df` on pyinspect's own (Docker's outputs: test_docker_engine.py): paused and
restarting containers are active, an untagged image is `<none>`, build cache records are
counted, a damaged container record does not stop the listing, and what `prune` then
reclaims is what `df` said was reclaimable."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def _summary(pc):
    lines = pc("system", "df", "--format", "{{json .}}").stdout.splitlines()
    return {r["Type"]: r for r in map(json.loads, lines)}


def test_df_counts_and_reclaimable(pc, tmp_path):
    pc("run", "-d", "--name", "du-paused", "--net", "none", "busybox", "sleep", "600")
    pc("pause", "du-paused")
    pc("run", "--name", "du-done", "--net", "none", "busybox", "sh", "-c",
       "head -c 5000 /dev/zero > /z")  # fmt: skip
    # a commit, then its tag moved to a later one: the first is untagged (dangling)
    pc("commit", "du-done", "du-img:1")
    pc("run", "--name", "du-more", "--net", "none", "du-img:1", "sh", "-c", "echo 12 > /y")
    pc("commit", "du-more", "du-img:1")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo built > /b\nENV K=v\n")
    pc("build", "-q", "-t", "du-built:1", str(ctx))
    rows = _summary(pc)
    # busybox (2 containers + the build's base), the dangling commit (du-more's image),
    # the later commit, the build's image
    assert rows["Images"]["TotalCount"] == "4" and rows["Images"]["Active"] == "2", rows
    assert rows["Containers"]["TotalCount"] == "3" and rows["Containers"]["Active"] == "1"
    # du-done's 5000 bytes and du-more's 3 are reclaimable; the paused one's 0 are not
    assert rows["Containers"]["Size"] == "5.003kB"
    assert rows["Containers"]["Reclaimable"] == "5.003kB (100%)"
    assert rows["Build Cache"]["TotalCount"] == "2" and rows["Build Cache"]["Size"] == "0B"
    verbose = json.loads(pc("system", "df", "-v", "--format", "json").stdout)
    dangling = [i for i in verbose["Images"] if i["Repository"] == "<none>"]
    assert (
        len(dangling) == 1 and dangling[0]["Tag"] == "<none>" and dangling[0]["Containers"] == "1"
    )
    # its layers are the later commit's too: nothing of it is its own
    assert dangling[0]["UniqueSize"] == "0B" and dangling[0]["SharedSize"] == "1.991MB"
    later = next(i for i in verbose["Images"] if i["Repository"] == "du-img")
    assert later["UniqueSize"] == "3B" and later["Containers"] == "0"
    text = pc("system", "df", "-v").stdout
    assert "<none>       <none>" in text and "du-paused" in text
    states = {c["Names"]: c["State"] for c in verbose["Containers"]}
    assert states == {"du-paused": "paused", "du-done": "exited", "du-more": "exited"}
    # what prune frees is what df called reclaimable
    out = pc("container", "prune", "-f").stdout.splitlines()
    assert out[-1] == "Total reclaimed space: 5.003kB"
    assert _summary(pc)["Containers"]["TotalCount"] == "1"
    pc("unpause", "du-paused")


def test_df_lists_past_a_damaged_record(pc):
    pc("run", "--name", "du-ok", "--net", "none", "busybox", "sh", "-c", "echo x > /x")
    pc("run", "--name", "du-bad", "--net", "none", "busybox", "true")
    cdir = Path(pc.root) / "containers" / pc.inspect("du-bad")["Id"]
    (cdir / "config.json").write_text("{not json")
    rows = _summary(pc)
    assert rows["Containers"]["TotalCount"] == "2" and rows["Containers"]["Size"] == "2B"
    names = [
        c["Names"]
        for c in json.loads(pc("system", "df", "-v", "--format", "json").stdout)["Containers"]
    ]
    assert "du-ok" in names and len(names) == 2
