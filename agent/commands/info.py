"""`pyinspect info`: what this host offers (kernel, cgroups, iptables, sysctls, eBPF hooks);
`pyinspect version`: the versions of pyinspect and what it runs on."""

import json

import click


def _render(info):
    k, cg = info["kernel"], info["cgroups"]
    lines = [f"Kernel:        {k['release']} ({k['machine']})"]
    if cg["layout"] == "hybrid":
        layout = (
            f"hybrid (v1 controllers + cgroup2 at {', '.join(cg['v2_mounts'])}, "
            f"v2 controllers: {' '.join(cg['v2_controllers']) or 'none'})"
        )
    elif cg["layout"] == "v2":
        layout = f"v2 (controllers: {' '.join(cg['v2_controllers']) or 'none'})"
    else:
        layout = cg["layout"]
    lines.append(f"Cgroups:       {layout}")
    for mnt, ctrls in sorted(cg["v1_hierarchies"].items()):
        lines.append(f"  v1 {mnt}: {','.join(ctrls)}")
    lines.append("iptables backends:")
    for b in info["iptables"]:
        if b["present"]:
            extra = f", {b['chains']} chains" if "chains" in b else ""
            lines.append(f"  {b['backend']:<16} {b['rules']} rules{extra} (see: {b['tool']})")
        else:
            lines.append(f"  {b['backend']:<16} absent ({b['reason']})")
    w = info.get("iptables_writer") or {}
    if w.get("backend"):
        lines.append(f"  pyinspect writes {w['backend']} with {w['writer']}")
    for note in (w.get("note"), w.get("tidy_note")):
        if note:
            lines.append(f"  note: {note}")
    lines.append(f"Sysctls (netns {info['netns']}):")
    for key, val in info["sysctls"].items():
        lines.append(f"  {key} = {val if val is not None else 'not present'}")
    t = info["tracefs"]
    lines.append(
        "tracefs:       "
        + (f"mounted at {', '.join(t['mounts'])}" if t["mounted"] else f"not mounted ({t['hint']})")
    )
    b = info["btf"]
    lines.append(
        "BTF:           "
        + (f"{b['path']} ({b['size']} bytes)" if b["present"] else f"absent ({b['path']} missing)")
    )
    lines.append("eBPF hooks:")
    if info["ebpf"] is None:
        lines.append("  unknown (capability detection is not available in this build)")
    else:
        for h in info["ebpf"]:
            state = "yes" if h["available"] else "no "
            lines.append(f"  {h['name']:<15} {state} {h['reason']}")
    if info.get("loaders"):
        lines.append("Probe loaders:")
        for p in info["loaders"]:
            obj = f" (object: {p['object']})" if p.get("object") else ""
            lines.append(f"  {p['probe']:<22} {p['loader']}{obj}")
    return "\n".join(lines)


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@click.pass_obj
def info(obj, as_json):
    """Show the kernel, cgroup layout, iptables backends and rule counts, forwarding and
    bridge-netfilter sysctls, tracefs, BTF, which eBPF hook types load here, and how
    each probe is loaded (libbpf object or bcc).

    \b
    Examples:
      pyinspect info
      pyinspect info --json | jq .ebpf
    """
    from ..host.hostinfo import collect

    facts = collect()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(_render(facts))


@click.command("version")
@click.option(
    "-f",
    "--format",
    "fmt",
    metavar="TEMPLATE",
    help="A Go template such as '{{.Server.Version}}', or json.",
)
def version(fmt):
    """Show pyinspect's version and those of the kernel, the libraries and the firewall
    tools it works with, as `docker version` shows Docker's.

    \b
    Examples:
      pyinspect version
      pyinspect version --format '{{.Server.KernelVersion}}'
    """
    from ..dockerfmt.psformat import format_object
    from ..host.versions import render, versions

    data = versions()
    click.echo(format_object(fmt, data) if fmt else "\n".join(render(data)))
