"""`pyinspect doctor`: check the usual causes of broken container networking."""

import json
import sys

import click


def _print(lib, findings, out):
    if not findings:
        out("No problems found.")
        return
    for f in findings:
        out(f"[{f.severity}] {f.check}: {f.summary}")
        if f.container:
            out(f"  container: {f.container}")
        out("  evidence:")
        for line in f.evidence:
            if line:
                out(f"    {line}")
        tag = (
            ""
            if not f.actions or all(a[0] == "ack" for a in f.actions)
            else ("   (safe: --fix applies it)" if f.safe else "   (--fix asks first)")
        )
        out(f"  fix: {f.fix}{tag}")
        out(f"  runbook: {lib.runbook_file(f.runbook)}")
        out("")


@click.command("doctor")
@click.option("--container", "container", metavar="NAME", help="Only this container's findings.")
@click.option(
    "--port",
    "port",
    type=click.IntRange(1, 65535),
    metavar="HOSTPORT",
    help="Only this published host port (and host-wide findings).",
)
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--fix", is_flag=True, help="Apply safe fixes; ask before the others.")
@click.option("--yes", "-y", is_flag=True, help="With --fix: apply every fix without asking.")
@click.pass_obj
def doctor(obj, container, port, as_json, fix, yes):
    """Check the usual causes of broken container networking, with evidence.

    Runs in the current network namespace (the host); reads both iptables
    backends, sysctls, links, routes, conntrack and each container's namespace.
    Exit code 0 when clean, 1 when problems were found (after --fix: still found).
    """
    from pyinspect import doctor as lib

    root = obj["root"]
    first = lib.examine(root, container=container, port=port)
    findings = first.findings
    out = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    report = {"findings": [f.to_dict() for f in findings], "notes": first.notes}
    if not as_json:
        _print(lib, findings, out)
    if fix and findings:

        def confirm(f):
            if yes:
                return True
            if not sys.stdin.isatty():
                out(f"skipped (not safe, no terminal to ask; use --yes): {f.fix}")
                return False
            return click.confirm(
                f"Apply fix for {f.check} ({f.summary})?\n  {f.fix}\n", default=False, err=as_json
            )

        results = lib.apply_fixes(findings, confirm=confirm, root=root)
        report["fixes"] = [
            {"check": f.check, "container": f.container, "status": status, "detail": detail}
            for f, status, detail in results
        ]
        for f, status, detail in results:
            out(f"fix {status}: {f.check}: {detail}")
        findings = lib.run(root, container=container, port=port)
        report["after_fix"] = [f.to_dict() for f in findings]
        if not as_json:
            out("")
            out("After fixes:")
            _print(lib, findings, out)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    return 1 if lib.problems(findings) else 0
