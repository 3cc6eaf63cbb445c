"""`pyinspect images|load|save|tag|rmi` through the real console script on a temp root."""

import json
import os
import subprocess

import pytest

from conftest import Cli
from helpers import imagekit as kit

pytestmark = pytest.mark.root

BASE = kit.layer(("bin", "dir"), ("bin/tool", "file", b"tool"))
TOP = kit.layer(("app", "dir"), ("app/main", "file", b"main"))


@pytest.fixture
def archive(tmp_path):
    return kit.docker_legacy(tmp_path / "pm.tar", [([BASE, TOP], ["pm-cli:1"], None)])


def one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_images_lists_in_docker_columns_and_json(cli, archive):
    out = cli("images").stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert len(out) == 1
    assert cli("load", "-i", archive).stdout.strip() == "Loaded image: pm-cli:1"
    image_id = f"sha256:{kit.sha(kit.config([BASE, TOP]))}"
    rows = cli("images").stdout.splitlines()
    assert rows[1].split()[:3] == ["pm-cli", "1", image_id[7:19]]
    # Docker's size: the layers' file bytes ("tool" and "main"), not their tars'
    assert rows[1].split()[-1] == "8B"
    (row,) = json.loads(cli("images", "--format", "json").stdout)
    assert row["Id"] == image_id and row["Repository"] == "pm-cli" and row["Tag"] == "1"
    assert row["Size"] == 8 and row["Created"] == "2024-01-02T03:04:05Z"
    assert cli("images", "-q").stdout.split() == [image_id[7:19]]
    assert cli("images", "--no-trunc", "-q").stdout.split() == [image_id]
    assert cli("images", "nosuch").stdout.count("\n") == 1


def test_load_from_stdin_save_to_stdout_and_round_trip(cli, archive, tmp_path):
    proc = subprocess.run(
        cli.argv("load"), input=archive.read_bytes(), capture_output=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout == b"Loaded image: pm-cli:1\n"
    cli("tag", "pm-cli:1", "pm-cli:2")
    cli("save", "-o", tmp_path / "out.tar", "pm-cli:1", "pm-cli:2")
    piped = subprocess.run(
        cli.argv("save", "pm-cli:2", "pm-cli:1"), capture_output=True, check=False
    )
    assert piped.returncode == 0 and piped.stdout == (tmp_path / "out.tar").read_bytes()
    other = Cli(tmp_path / "other")
    assert other("load", "-i", tmp_path / "out.tar").stdout.split("\n")[:2] == [
        "Loaded image: pm-cli:1",
        "Loaded image: pm-cli:2",
    ]
    assert json.loads(other("images", "--format", "json").stdout) == json.loads(
        cli("images", "--format", "json").stdout
    )


def test_tag_and_rmi(cli, archive, state_root):
    cli("load", "-i", archive)
    cli("tag", "pm-cli:1", "pm-two")
    assert "pm-two" in cli("images").stdout
    assert cli("rmi", "pm-two").stdout.strip() == "Untagged: pm-two:latest"
    one_line_error(cli("tag", "pm-cli:1", "Bad Name", check=False), 2, "invalid repository")
    one_line_error(cli("tag", "pm-nosuch", "pm-x", check=False), 3, "no such image")
    one_line_error(cli("rmi", "pm-nosuch", check=False), 3, "no such image")
    one_line_error(cli("save", "-o", state_root / "x.tar", "pm-nosuch", check=False), 3)
    assert not (state_root / "x.tar").exists()
    # a container using the image blocks rmi; -f drops the tag only
    image_id = f"sha256:{kit.sha(kit.config([BASE, TOP]))}"
    cdir = state_root / "containers" / ("b" * 64)
    cdir.mkdir(parents=True)
    (cdir / "config.json").write_text(
        json.dumps({"id": "b" * 64, "name": "pm-user", "image_id": image_id})
    )
    one_line_error(cli("rmi", "pm-cli:1", check=False), 4, "pm-user")
    assert cli("rmi", "-f", "pm-cli:1").stdout.strip() == "Untagged: pm-cli:1"
    assert cli("images", "-q").stdout.split() == [image_id[7:19]]
    assert "<none>" in cli("images").stdout
    (cdir / "config.json").unlink()
    assert cli("rmi", image_id[7:15]).stdout.strip() == f"Deleted: {image_id}"
    assert cli("images", "-q").stdout == ""
    # several at once: the good ones are removed, the bad one fails the command
    cli("load", "-i", archive)
    cli("tag", "pm-cli:1", "pm-cli:3")
    proc = cli("rmi", "pm-cli:3", "pm-nosuch", "pm-cli:1", check=False)
    assert proc.returncode == 3 and "Untagged: pm-cli:3" in proc.stdout
    assert "Deleted: sha256:" in proc.stdout and proc.stderr.count("Error:") == 1


def test_bad_inputs_are_one_line_and_keep_state(cli, archive, tmp_path):
    cli("load", "-i", archive)
    before = cli("images", "--format", "json").stdout
    bad = {
        "empty": b"",
        "text": b"not an archive\n" * 100,
        "truncated": archive.read_bytes()[:3000],
        "evil-layer": kit.docker_legacy(
            tmp_path / "e.tar",
            [([kit.layer(("lnk", "sym", "/"), ("lnk/pm-escape", "file", b"x"))], ["pm-e:1"], None)],
        ).read_bytes(),
        "hardlink-out": kit.docker_legacy(
            tmp_path / "d.tar", [([kit.layer(("h", "hard", "../../etc/passwd"))], ["pm-d:1"], None)]
        ).read_bytes(),
    }
    for name, data in bad.items():
        p = tmp_path / f"{name}.tar"
        p.write_bytes(data)
        one_line_error(cli("load", "-i", p, check=False), 2, "Error: loading")
        assert cli("images", "--format", "json").stdout == before, name
    one_line_error(cli("load", "-i", tmp_path / "missing.tar", check=False), 3, "no such file")
    proc = subprocess.run(
        cli.argv("load"), input=b"garbage", capture_output=True, text=False, check=False
    )
    assert proc.returncode == 2 and proc.stderr.startswith(b"Error: loading stdin:")
    assert not os.path.exists("/pm-escape")
    assert list((cli.root / "images" / "tmp").iterdir()) == []


def test_loaded_image_runs_with_its_config_and_whiteouts(cli, tmp_path):
    """End to end: busybox base + a layer with whiteouts, loaded and run by the runtime."""
    from pyinspect.runtime.images import ImageStore

    bb = ImageStore(cli.root).resolve("busybox")
    base = (ImageStore(cli.root).blobs / bb.diff_ids[0][7:]).read_bytes()
    top = kit.layer(
        ("etc", "dir"),
        ("etc/.wh.group", "file"),
        ("var/www", "dir"),
        ("var/www/.wh..wh..opq", "file"),
        ("var/www/new.html", "file", b"new"),
        ("app", "dir"),
        ("app/msg", "file", b"hello from pm\n"),
    )
    cfg = json.loads(kit.config([base, top]))
    cfg["config"].update(Cmd=["cat", "msg"], WorkingDir="/app", Env=["PATH=/bin:/usr/bin"])
    cfg = json.dumps(cfg).encode()
    arc = kit.docker_legacy(tmp_path / "run.tar", [([base, top], ["pm-run:1"], cfg)])
    cli("load", "-i", arc)
    assert cli("run", "--rm", "--net", "none", "pm-run:1").stdout == "hello from pm\n"
    out = cli(
        "run", "--rm", "--net", "none", "pm-run:1", "sh", "-c", "ls /etc; echo --; ls /var/www"
    ).stdout
    etc, www = out.split("--\n")
    assert "passwd" in etc.split() and "group" not in etc.split()
    assert www.split() == ["new.html"]
    assert (bb.layer_dirs[0] / "etc" / "group").exists()  # the base layer is untouched


def test_load_prints_only_the_tags_the_archive_holds(cli, archive, tmp_path):
    """The image already had other tags in the store: load names only the archive's
    (Docker's output; before, every tag of the image was printed)."""
    cli("load", "-i", archive)
    cli("tag", "pm-cli:1", "pm-cli:2")
    cli("tag", "pm-cli:1", "pm-elsewhere:7")
    assert cli("load", "-i", archive).stdout == "Loaded image: pm-cli:1\n"
    untagged = kit.docker_legacy(tmp_path / "u.tar", [([BASE, TOP], None, None)])
    image_id = f"sha256:{kit.sha(kit.config([BASE, TOP]))}"
    assert cli("load", "-i", untagged).stdout == f"Loaded image ID: {image_id}\n"
    two = kit.docker_legacy(tmp_path / "two.tar", [([BASE, TOP], ["pm-a:1", "pm-b:1"], None)])
    assert cli("load", "-i", two).stdout == "Loaded image: pm-a:1\nLoaded image: pm-b:1\n"
