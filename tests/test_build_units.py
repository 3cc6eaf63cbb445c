"""The builder's pieces on their own: Docker's word expansion and path patterns, the
Dockerfile checks, the cache key, and the layer diff of a real overlayfs upper dir
(whiteouts and opaque directories made by the kernel, read back by the store's extractor).
"""

import os
import subprocess
import tarfile

import pytest

from pyinspect.errors import UsageError
from pyinspect.runtime.build import dockerfile, layerdiff, planner
from pyinspect.runtime.build.cache import step_key
from pyinspect.runtime.build.dockerfile import DockerfileError, expand
from pyinspect.runtime.build.patterns import IgnoreRules, to_regex


@pytest.mark.parametrize(
    "word,want",
    [
        ("$A", "1"),
        ("${A}x", "1x"),
        ("'$A'", "$A"),
        ('"$A b"', "1 b"),
        ("\\$A", "$A"),
        ("${NOPE:-dflt}", "dflt"),
        ("${E:-dflt}", "dflt"),
        ("${E-dflt}", ""),
        ("${A:+set}", "set"),
        ("${NOPE:+set}", ""),
        ("${A:-${B}}", "1"),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("${NOPE}", ""),
    ],
)
def test_expand_like_docker(word, want):
    assert expand(word, {"A": "1", "B": "2", "E": ""}) == want


def test_expand_errors_name_the_line():
    with pytest.raises(DockerfileError, match="line 7.*NOPE: needed"):
        expand("${NOPE:?needed}", {}, line=7)
    with pytest.raises(DockerfileError, match="line 3.*unmatched"):
        expand('"open', {}, line=3)
    with pytest.raises(DockerfileError, match="missing"):
        expand("${A", {}, line=1)
    assert expand("`$A", {"A": "1"}, escape="`") == "$A"


def test_escape_directive():
    assert dockerfile.escape_char("# escape=`\nFROM x\n") == "`"
    assert dockerfile.escape_char("# syntax=x\n# escape=`\nFROM x\n") == "`"
    assert dockerfile.escape_char("FROM x\n# escape=`\n") == "\\"
    assert dockerfile.escape_char("\ufeff# escape=`\r\nFROM x\r\n") == "`"


@pytest.mark.parametrize(
    "pattern,path,hit",
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "d/a.txt", False),
        ("**/*.txt", "d/e/a.txt", True),
        ("**/*.txt", "a.txt", True),
        ("d/?.c", "d/x.c", True),
        ("d/?.c", "d/xy.c", False),
        ("[ab].c", "b.c", True),
        ("[^ab].c", "b.c", False),
        ("d/**", "d/x/y", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
    ],
)
def test_patterns_follow_go_match(pattern, path, hit):
    assert bool(to_regex(pattern).match(path)) is hit


def test_dockerignore_rules():
    rules = IgnoreRules.parse("# c\n*.log\n/secret\n!secret/keep\nbuild/**\n!build/ok\n")
    assert rules.excluded("x.log") and not rules.excluded("d/x.log")
    assert rules.excluded("secret") and rules.excluded("secret/key")
    assert not rules.excluded("secret/keep")
    assert rules.excluded("build/a/b") and not rules.excluded("build/ok")
    assert not IgnoreRules.parse("").excluded("anything")
    with pytest.raises(UsageError, match=".dockerignore line 2"):
        IgnoreRules.parse("ok\n[unterminated\n")


def test_parser_refusals_name_lines():
    text = "FROM busybox\n\n# comment\nRUN a \\\n  b\nCOPY --parents a /b\n"
    with pytest.raises(DockerfileError, match="line 6.*--parents.*BuildKit"):
        dockerfile.parse(text)
    ins = dockerfile.parse('FROM busybox\nRUN a \\\n  b\nCMD ["x"]\n')
    assert [(i.cmd, i.line, i.json) for i in ins] == [
        ("FROM", 1, False),
        ("RUN", 2, False),
        ("CMD", 4, True),
    ]
    (hc,) = dockerfile.parse('FROM b\nHEALTHCHECK CMD ["a", "b"]\n')[1:]
    assert dockerfile.healthcheck(hc) == {"Test": ["CMD", "a", "b"]}
    (hc,) = dockerfile.parse("FROM b\nHEALTHCHECK NONE\n")[1:]
    assert dockerfile.healthcheck(hc) == {"Test": ["NONE"]}
    assert dockerfile.parse_duration("1h2m3.5s") == 3723 * 10**9 + 5 * 10**8
    with pytest.raises(DockerfileError, match="line 2.*ONBUILD"):
        dockerfile.parse("FROM busybox\nONBUILD FROM x\n")
    (ob,) = dockerfile.parse("FROM busybox\nONBUILD RUN a \\\n  b\n")[1:]
    assert ob.args == ["RUN a   b"] and dockerfile.trigger_instruction(ob.args[0], 9).line == 9
    with pytest.raises(DockerfileError, match="line 2.*source and a destination"):
        dockerfile.parse("FROM busybox\nCOPY onlyone\n")
    with pytest.raises(DockerfileError, match="no instructions"):
        dockerfile.parse("# nothing\n")


def test_planner_global_args_and_needed_stages():
    ins = dockerfile.parse(
        "ARG V=1\nFROM busybox:${V} AS a\nFROM a AS b\nRUN x\n"
        "FROM busybox AS c\nCOPY --from=a /x /y\nFROM busybox\n"
    )
    p = planner.plan(ins, {"V": "2"}, target="c")
    assert [s.name for s in p.needed] == ["a", "c"]
    assert p.stages[0].base == "busybox:2"
    assert p.total_steps == 3
    p = planner.plan(ins, {}, target=None)
    assert [s.index for s in p.needed] == [3] and p.stages[0].base == "busybox:1"
    with pytest.raises(DockerfileError, match="line 2.*duplicate"):
        planner.plan(dockerfile.parse("FROM x AS a\nFROM y AS a\n"), {})


def test_cache_key_depends_on_parent_and_inputs():
    k = step_key("sha256:a", ["RUN", ["sh", "-c", "x"], []])
    assert k == step_key("sha256:a", ["RUN", ["sh", "-c", "x"], []])
    assert k != step_key("sha256:b", ["RUN", ["sh", "-c", "x"], []])
    assert k != step_key("sha256:a", ["RUN", ["sh", "-c", "x"], [["A", "1"]]])


@pytest.mark.root
def test_layer_diff_of_a_real_overlay_upper(tmp_path):
    """Changes made through a kernel overlayfs mount -> OCI members -> extracted again."""
    lower = tmp_path / "lower"
    for d in ("keep", "gone", "opaque/old", "same"):
        (lower / d).mkdir(parents=True)
    (lower / "keep" / "a").write_text("a")
    (lower / "keep" / "b").write_text("b")
    (lower / "gone" / "x").write_text("x")
    (lower / "opaque" / "old" / "f").write_text("f")
    (lower / "same" / "s").write_text("s")
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    script = (
        f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} "
        f"{mnt} && cd {mnt} && rm keep/b && rm -r gone && rm -r opaque && "
        f"mkdir -p opaque/new && echo n > opaque/new/f && echo c > keep/a && "
        f"ln keep/a keep/hard && mkdir -p etc && echo h > etc/hostname && "
        f"cat same/s >/dev/null"
    )
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True)
    out = tmp_path / "layer.tar"
    n = layerdiff.write_layer(upper, [lower], out)
    with tarfile.open(out) as tf:
        members = {m.name: m for m in tf}
    assert "keep/.wh.b" in members and "gone" not in members and ".wh.gone" in members
    assert "opaque/.wh..wh..opq" in members and "opaque/new/f" in members
    assert members["keep/hard"].islnk() or members["keep/a"].islnk()
    assert "same" not in members and "etc/hostname" not in members  # runtime file: left out
    assert n == len(members)
    # the store's own extractor turns it back into overlay whiteouts
    from pyinspect.runtime.archive import extract_layer

    back = tmp_path / "back"
    back.mkdir()
    extract_layer(out, back)
    st = os.lstat(back / "keep" / "b")
    assert os.major(st.st_rdev) == 0 and os.minor(st.st_rdev) == 0
    assert os.getxattr(back / "opaque", "trusted.overlay.opaque") == b"y"
    assert (back / "keep" / "a").read_text() == "c\n"
