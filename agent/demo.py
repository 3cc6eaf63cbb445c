"""The README demo: a walkthrough of Docker's port-mapping scenario with real commands.

Everything network-side happens in a namespace the demo creates and plays "the host" in
(`pyinspect-demo`), with "another machine" as a second namespace
(`pyinspect-demo-client`), so the machine's own routes and firewall are never touched.
Each step prints the command it runs and its real output. Safe to rerun: leftovers of an
earlier run are removed first, and everything is removed at the end.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .proc import delete_netns

HOST_NS = "pyinspect-demo"
CLIENT_NS = "pyinspect-demo-client"
HOST_IP = "10.203.0.1"
CLIENT_IP = "10.203.0.2"
PORT = 8088
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)  # each ends the demo


@dataclass
class Demo:
    """One run of the demo; `out` is where the transcript goes."""

    pyinspect: str
    root: str
    out: TextIO = sys.stdout
    serve_seconds: float = 0
    failures: list = field(default_factory=list)
    # a stop asked while a step's command runs waits for that command: killed half way,
    # `pyinspect run` can leave its netns behind with no container to remove it by
    stop_asked: bool = False
    in_step: bool = False

    def say(self, text=""):
        print(text, file=self.out, flush=True)

    def sh(self, argv, netns=None, check=False, timeout=120, show=True, quiet=False):
        """Run argv (in `netns` if given), echo it like a shell transcript, return the result."""
        shown = " ".join(shlex.quote(a) for a in argv)
        shown = shown.replace(f"{self.pyinspect} --root {self.root}", "pyinspect")
        if netns:
            argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
            shown = f"[{netns}] {shown}"
        if show:
            self.say(f"$ {shown}")
        self.in_step = True
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        finally:
            self.in_step = False
        if self.stop_asked:
            raise KeyboardInterrupt
        if show and not quiet:
            text = (proc.stdout + proc.stderr).rstrip()
            if text:
                self.say(text)
        if proc.returncode != 0 and check:
            self.failures.append(shown)
        return proc

    def pi(self, *args, host=True, **kw):
        argv = [self.pyinspect, "--root", self.root, *map(str, args)]
        return self.sh(argv, netns=HOST_NS if host else None, **kw)

    # -- the namespaces that play the host and the other machine ------------------------
    def make_namespaces(self):
        self.remove_namespaces()
        cmds = [
            ["ip", "netns", "add", HOST_NS],
            ["ip", "netns", "add", CLIENT_NS],
            ["ip", "-n", HOST_NS, "link", "set", "lo", "up"],
            ["ip", "-n", CLIENT_NS, "link", "set", "lo", "up"],
            [
                "ip",
                "-n",
                HOST_NS,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                CLIENT_NS,
            ],
            ["ip", "-n", HOST_NS, "addr", "add", f"{HOST_IP}/24", "dev", "eth0"],
            ["ip", "-n", CLIENT_NS, "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0"],
            ["ip", "-n", HOST_NS, "link", "set", "eth0", "up"],
            ["ip", "-n", CLIENT_NS, "link", "set", "eth0", "up"],
        ]
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)

    def remove_namespaces(self):
        for ns in (CLIENT_NS, HOST_NS):
            delete_netns(ns)

    # -- the walkthrough ----------------------------------------------------------------
    def run(self):
        """The walkthrough, then the clean-up; SIGTERM and SIGHUP end it as Ctrl-C does
        (the clean-up still runs), once the command of the step under way has ended."""

        def interrupt(_sig, _frame):
            self.stop_asked = True
            if not self.in_step:
                raise KeyboardInterrupt

        old = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _run(self):
        self.say(
            "== pyinspect demo: a container `test` published on port "
            f"{PORT}, reached from another machine =="
        )
        self.say(
            f"The host is network namespace {HOST_NS} ({HOST_IP}); the other machine is "
            f"{CLIENT_NS} ({CLIENT_IP}).\n"
        )
        self.pi("rm", "-f", "test", show=False)
        self.make_namespaces()
        interrupted = False
        try:
            self.start_agent()
            self.walkthrough()
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP before the walkthrough's end
            interrupted = True
        finally:
            for s in STOP_SIGNALS:  # the clean-up runs to its end
                signal.signal(s, signal.SIG_IGN)
            self.stop_asked = False  # its own commands run to their ends
            self.say("\n== cleaning up ==")
            self.pi("rm", "-f", "test")
            self.stop_agent()
            self.remove_namespaces()
        if interrupted:
            self.say("\nDemo stopped before its end: everything it made is removed.")
            return 130
        if self.failures:
            self.say("\nThese steps failed:\n  " + "\n  ".join(self.failures))
            return 1
        self.say("\nDemo finished: everything it made is removed.")
        return 0

    def walkthrough(self):
        self.say("-- the host --")
        self.pi("info", host=False, check=True)
        self.say("\n-- a container, published like `docker run -d --name test -p 8088:80` --")
        run = self.pi(
            "run",
            "-d",
            "--name",
            "test",
            "-p",
            f"{PORT}:80",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/var/www",
            check=True,
        )
        self.container_id = run.stdout.strip()[:12] or "test"
        self.pi("ps", check=True)
        self.pi("exec", "test", "ps", check=True)
        self.pi("exec", "test", "ip", "addr", "show", "eth0", check=True)
        self.pi("inspect", "test", check=True)
        self.say("\n-- the veth map: which host interface pairs with test's eth0 --")
        self.pi("map", check=True)
        self.say("\n-- a trace while the other machine fetches a page through the port --")
        self.trace_and_fetch()
        self.say(
            "\n-- the merged pcapng: one interface per capture point, as Wireshark shows it --"
        )
        proc = self.sh(
            [
                "tshark",
                "-r",
                os.path.join(self.root, "demo.pcapng"),
                "-Y",
                "tcp",
                "-T",
                "fields",
                "-E",
                "header=y",
                "-e",
                "frame.interface_name",
                "-e",
                "ip.src",
                "-e",
                "tcp.srcport",
                "-e",
                "ip.dst",
                "-e",
                "tcp.dstport",
                "-e",
                "frame.comment",
            ],
            quiet=True,
        )
        lines = proc.stdout.splitlines()
        self.say(
            "\n".join(lines[:13]) + (f"\n... ({len(lines) - 13} more)" if len(lines) > 13 else "")
        )
        self.say("\n-- the rules and the conntrack entry that carried it --")
        from .runtime import iptables  # the backend pyinspect wrote its rules with

        ipt = iptables.tool(iptables.backend())
        self.sh([ipt, "-t", "nat", "-nvL", "PYINSPECT"], netns=HOST_NS)
        self.sh(["conntrack", "-L", "-p", "tcp", "--orig-port-dst", str(PORT)], netns=HOST_NS)
        self.say("\n-- doctor --")
        self.pi("doctor", "--container", "test")
        self.say("\n-- the timeline the agent recorded (process, cgroup events of test) --")
        # this run's container by id: earlier demos' containers named test are stored too
        self.pi("events", "--container", self.container_id, host=False, check=True)
        self.say("\n-- the dashboard --")
        self.check_dashboard()
        if self.serve_seconds:
            try:  # a stop from here on is the demo's end, not an interruption
                self.say(
                    f"\nThe dashboard stays up for {self.serve_seconds:g}s: open "
                    f"{self.login_url} (Ctrl-C ends the demo and cleans up)."
                )
                time.sleep(self.serve_seconds)
            except KeyboardInterrupt:
                pass

    def trace_and_fetch(self):
        argv = [
            "nsenter",
            f"--net=/run/netns/{HOST_NS}",
            self.pyinspect,
            "--root",
            self.root,
            "trace",
            "--container",
            "test",
            "--duration",
            "8",
            "-w",
            os.path.join(self.root, "demo.pcapng"),
        ]
        self.say(
            "$ [" + HOST_NS + "] pyinspect trace --container test --duration 8 -w demo.pcapng &"
        )
        tracer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ready = self._wait_ready(tracer)
            self.sh(
                ["wget", "-q", "-O-", f"http://{HOST_IP}:{PORT}/"],
                netns=CLIENT_NS,
                check=True,
                timeout=20,
            )
            if not ready:
                return
            out, _ = tracer.communicate(timeout=60)
        finally:
            if tracer.poll() is None:  # stopped half way: the trace detaches and ends
                tracer.terminate()
                tracer.communicate(timeout=60)
        self.say(out.rstrip())
        if tracer.returncode != 0:
            self.failures.append("pyinspect trace")

    def _wait_ready(self, tracer, timeout=60):
        """Echo the tracer's output until it says it is attached; False if it exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = tracer.stdout.readline()
            if not line:
                tracer.wait()
                self.failures.append("pyinspect trace (exited before it was ready)")
                return False
            self.say(line.rstrip())
            if "ready" in line.lower() or "Ctrl-C to stop" in line:
                return True
        tracer.kill()
        self.failures.append("pyinspect trace (not ready in time)")
        return False

    # -- the agent and its dashboard ----------------------------------------------------
    dashboard = "http://127.0.0.1:8900/"
    login_url = dashboard  # serve prints the real one (with its token)
    agent = None

    def start_agent(self):
        """`pyinspect serve` on loopback: probes on from the start, so the timeline has it all."""
        self.say("$ pyinspect serve --port 8900 &")
        from .runtime.isolation import set_parent_death_signal

        self.agent = subprocess.Popen(
            [self.pyinspect, "--root", self.root, "serve", "--port", "8900"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # a demo killed -9 takes its dashboard with it
            preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.agent.stdout is not None  # stdout=PIPE
            line = self.agent.stdout.readline()
            if not line:
                self.failures.append("pyinspect serve (exited: is port 8900 taken?)")
                self.agent = None
                return
            self.say(line.rstrip())
            if line.startswith("dashboard login"):
                self.login_url = line.rsplit(" ", 1)[1].strip()
            if "(ready)" in line:
                return
        self.failures.append("pyinspect serve (not ready in time)")

    def check_dashboard(self):
        import re
        import urllib.request

        if not self.agent:
            return
        for page in (
            "",
            "containers",
            "topology",
            "timeline?container=test",
            "flows",
            "traces",
            "doctor",
        ):
            url = self.dashboard + page
            token = (Path(self.root) / "web-token").read_text().strip()
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    body = r.read().decode(errors="replace")
                    title = re.search(r"<title>(.*?)</title>", body)
                    self.say(f"GET {url} -> {r.status} {title.group(1) if title else ''}")
            except OSError as exc:
                self.say(f"GET {url} -> {exc}")
                self.failures.append(f"dashboard page /{page}")

    def stop_agent(self):
        if self.agent:
            self.agent.terminate()
            try:
                self.agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
