"""Pull output shared by `pull` and `run` (Docker's lines and per-layer progress).

No click here: `run` reaches `ensure_image` on its fast start path.
"""

import sys


class LayerProgress:
    """Docker-like progress: one line per layer, redrawn in place on a terminal.

    Off a terminal only the changes of state are printed (no byte counts).
    """

    def __init__(self, stream=None, header=()):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.order = []
        self.header = list(header)  # printed with the first event: a failure before it
        # (bad name, registry down, no such image) prints nothing but the error

    def flush_header(self):
        for line in self.header:
            self.stream.write(line + "\n")
        self.header = []
        self.stream.flush()

    def __call__(self, layer, status, current=None, total=None):
        from ..units import decimal_size

        if self.header:
            self.flush_header()
        moving = status in ("Downloading", "Pushing") and current is not None and total
        if not self.tty:
            if not moving:
                self.stream.write(f"{layer}: {status}\n")
                self.stream.flush()
            return
        text = f"{layer}: {status}"
        if moving:
            done = int(50 * min(current, total) / total)
            text += (
                f" [{'=' * max(done - 1, 0)}{'>' if done else ''}{' ' * (50 - done)}] "
                f"{decimal_size(current)}/{decimal_size(total)}"
            )
        if layer not in self.order:
            self.order.append(layer)
            self.stream.write(text + "\n")
        else:
            up = len(self.order) - self.order.index(layer)
            self.stream.write(f"\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r")
        self.stream.flush()


def pull_image(root, ref, quiet=False, out=None):
    """Pull `ref` with Docker's output (to `out`, default stdout); returns the PullResult."""
    from ..runtime.images import ImageStore
    from ..runtime.registry.pull import pull as do_pull
    from ..runtime.registry.reference import parse

    out = out or sys.stdout
    r = parse(ref)
    header = []
    if ":" not in ref.rsplit("/", 1)[-1] and "@" not in ref:
        header.append("Using default tag: latest")
    header.append(f"{r.tag or r.digest}: Pulling from {r.path}")
    progress = LayerProgress(out, header)
    result = do_pull(ImageStore(root), ref, progress=None if quiet else progress)
    for line in result.notes:
        sys.stderr.write(f"note: {line}\n")
    if not quiet:
        progress.flush_header()
        out.write(f"Digest: {result.digest}\n")
        shown = r.tagged or str(r)
        if result.downloaded:
            out.write(f"Status: Downloaded newer image for {shown}\n")
        else:
            out.write(f"Status: Image is up to date for {shown}\n")
    out.write(f"{result.reference}\n")
    out.flush()
    return result


PULL_ENV = "PYINSPECT_PULL"


def ensure_image(root, ref):
    """`run`'s hook: pull `ref` when the store lacks it (Docker's --pull=missing).

    Costs one read of the tags file when the image is there; busybox:latest and image
    ids are left to the store (it builds busybox itself). PYINSPECT_PULL=never turns the
    pull off (Docker's --pull=never): a missing image is then "no such image".
    """
    import os

    from ..errors import UsageError
    from ..runtime.images import DEFAULT_IMAGE, ImageStore, parse_reference

    policy = os.environ.get(PULL_ENV, "missing").strip().lower() or "missing"
    if policy not in ("missing", "never"):
        raise UsageError(f"{PULL_ENV}={policy!r}: expected 'missing' or 'never'")
    store = ImageStore(root)
    if policy == "never" or store.exists(ref):
        return
    try:
        if "@" not in ref and parse_reference(ref) == DEFAULT_IMAGE:
            return
    except UsageError:  # a bad name is reported by create() as before
        return
    if "@" not in ref and len(ref) >= 12 and all(c in "0123456789abcdef" for c in ref):
        return
    sys.stderr.write(f"Unable to find image '{ref}' locally\n")
    pull_image(root, ref, out=sys.stderr)
