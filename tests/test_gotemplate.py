"""The Go template subset `inspect -f` and `ps --format` take, against what Go's
text/template (as the docker CLI sets it up) prints for the same data."""

import json

import pytest

from pyinspect.dockerfmt import gotemplate, psformat
from pyinspect.dockerfmt.gotemplate import TemplateError, render

DOC = {
    "Id": "3f2a",
    "Name": "/web",
    "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0},
    "Config": {
        "Hostname": "3f2a",
        "Env": ["PATH=/bin", "HOSTNAME=3f2a"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Labels": {},
    },
    "NetworkSettings": {
        "IPAddress": "172.18.0.2",
        "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8088"}], "443/tcp": None},
        "Networks": {"bridge": {"IPAddress": "172.18.0.2", "Gateway": "x"}},
    },
    "Mounts": [
        {"Source": "/srv", "Destination": "/data", "RW": True},
        {"Source": "/etc/x", "Destination": "/x", "RW": False},
    ],
    "HostConfig": {"Binds": None, "Memory": 31457280},
}

CASES = [
    ("{{.State.Pid}}", "4242"),
    ("{{.NetworkSettings.IPAddress}}", "172.18.0.2"),
    (
        "{{json .Config}}",
        (
            '{"Hostname":"3f2a","Env":["PATH=/bin","HOSTNAME=3f2a"],'
            '"Cmd":["nginx","-g","daemon off;"],"Labels":{}}'
        ),
    ),
    ("{{json .State.Running}}", "true"),
    ('{{index .NetworkSettings.Ports "80/tcp"}}', "[map[HostIp:0.0.0.0 HostPort:8088]]"),
    ('{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}', "8088"),
    (
        "{{range $p, $b := .NetworkSettings.Ports}}{{$p}}={{$b}};{{end}}",
        "443/tcp=<nil>;80/tcp=[map[HostIp:0.0.0.0 HostPort:8088]];",
    ),
    ("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "172.18.0.2"),
    ("{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}", "/srv:/data /etc/x:/x "),
    ("{{range $i, $m := .Mounts}}{{if $i}},{{end}}{{$m.Destination}}{{end}}", "/data,/x"),
    ("{{range .Mounts}}{{if not .RW}}{{.Source}}{{end}}{{end}}", "/etc/x"),
    ("{{range .HostConfig.Binds}}x{{else}}none{{end}}", "none"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if eq .State.Pid 1}}a{{else if gt .State.Pid 100}}b{{else}}c{{end}}", "b"),
    ("{{with .NetworkSettings.Networks.bridge}}{{.Gateway}}{{end}}", "x"),
    ("{{$ip := .NetworkSettings.IPAddress}}ip={{$ip}}", "ip=172.18.0.2"),
    ('{{.Name | upper}}|{{lower "AB"}}|{{title "hello world"}}', "/WEB|ab|Hello World"),
    ('{{join .Config.Cmd " "}}', "nginx -g daemon off;"),
    ('{{split "a:b" ":"}} {{len .Config.Env}}', "[a b] 2"),
    ('{{printf "%s has %d env" .Name (len .Config.Env)}}', "/web has 2 env"),
    ('{{printf "%-6s|%5d|%q|%v" "ab" 42 "q" .State.Running}}', 'ab    |   42|"q"|true'),
    ("{{.Config.Env}}", "[PATH=/bin HOSTNAME=3f2a]"),
    ("{{.Config.Labels}}", "map[]"),
    ("{{.HostConfig.Binds}}", "<nil>"),
    ("{{.HostConfig.Memory}}", "31457280"),
    ("{{index .Config.Env 1}}", "HOSTNAME=3f2a"),
    ("{{slice .Config.Cmd 1 2}}", "[-g]"),
    ('{{and .State.Running .Name}} {{or .HostConfig.Binds "none"}}', "/web none"),
    ("{{- /* a comment */ -}}\n  {{ .Name -}}  \n!", "/web!"),
    ('a {{- " b " -}} c', "a b c"),
    ("{{println .Name}}", "/web\n"),
    ('{{print 1 2 "x" 3}}', "1 2x3"),
    ("{{pad .Name 1 2}}|{{truncate .Name 2}}", " /web  |/w"),
    ("{{`raw\\n`}}", "raw\\n"),
    ('{{range $k, $v := .State}}{{if eq $k "Pid"}}{{$v}}{{end}}{{end}}', "4242"),
    ("{{range .Mounts}}{{if .RW}}{{break}}{{end}}{{.Source}}{{end}}", ""),
    ("{{$.Name}}{{range .Mounts}}{{$.Id}}{{end}}", "/web3f2a3f2a"),
]


@pytest.mark.parametrize("template,expected", CASES)
def test_renders_like_go(template, expected):
    assert render(template, DOC) == expected


ERRORS = [
    ("{{.Nope}}", 'template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"'),
    (
        "x\n {{.State.Nope}}",
        'template: :2:3: executing "" at <.State.Nope>: map has no entry for key "Nope"',
    ),
    ("{{.State.Pid.X}}", "can't evaluate field X in type int"),
    ("{{.HostConfig.Binds.X}}", "nil pointer evaluating interface {}.X"),
    ("{{nope .Name}}", 'template: :1: function "nope" not defined'),
    ("{{.Name", "template: :1: unclosed action"),
    ("{{if .Name}}x", "template: :1: unexpected EOF"),
    ("{{end}}", "template: :1: unexpected {{end}}"),
    ('{{define "x"}}y{{end}}', "{{define}} is not supported by pyinspect"),
    ('{{template "x"}}', "{{template}} is not supported by pyinspect"),
    ("{{index .Config.Env 9}}", "error calling index: index out of range: 9"),
    ("{{len .State.Pid}}", "error calling len: len of type int"),
    ('{{eq .State.Pid "1"}}', "incompatible types for comparison"),
    ("{{.Name 1}}", "can't give argument to non-function .Name"),
    ("{{upper}}", "wrong number of args for upper: want 1 got 0"),
    ("{{$x}}", "undefined variable: $x"),
    ("{{(.Name}}", "unclosed left paren"),
]


@pytest.mark.parametrize("template,message", ERRORS)
def test_errors_are_go_shaped_one_liners(template, message):
    with pytest.raises(TemplateError) as exc:
        render(template, DOC)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_json_function_round_trips():
    assert json.loads(render("{{json .}}", DOC)) == DOC
    assert gotemplate.parse("{{.Name}}").render({"Name": "a"}) == "a"


# -- Docker's ps shapes ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds,text",
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5399, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (14 * 86400, "2 weeks"),
        (60 * 86400, "2 months"),
        (730 * 86400, "2 years"),
    ],
)
def test_human_duration_is_dockers(seconds, text):
    assert psformat.human_duration(seconds) == text


def test_ports_column_is_dockers():
    def port(priv, pub=0, ip="", kind="tcp"):
        return {"IP": ip, "PrivatePort": priv, "PublicPort": pub, "Type": kind}

    show = psformat.display_ports
    assert show([port(80, 8088, "0.0.0.0")]) == "0.0.0.0:8088->80/tcp"
    assert show([port(80)]) == "80/tcp"
    assert (
        show([port(53, 5353, "0.0.0.0", "udp"), port(80, 8088, "127.0.0.1")])
        == "0.0.0.0:5353->53/udp, 127.0.0.1:8088->80/tcp"
    )
    assert (
        show([port(8000, 8000, "0.0.0.0"), port(8001, 8001, "0.0.0.0")])
        == "0.0.0.0:8000-8001->8000-8001/tcp"
    )
    assert show([port(80), port(81), port(443)]) == "80-81/tcp, 443/tcp"
    assert show([]) == ""


def test_tabwriter_layout_is_the_docker_clis():
    lines = psformat.tabwrite(["CONTAINER ID\tIMAGE\tNAMES", "3f2a\tbusybox\tweb"])
    assert lines == ["CONTAINER ID   IMAGE     NAMES", "3f2a           busybox   web"]
