"""Pull output shared by `pull` and `run` (Docker's lines and per-layer progress).

No click here: `run` reaches `ensure_image` on its fast start path.
"""

import sys


class LayerProgress:
    """Docker-like progress: one line per layer, redrawn in place on a terminal.

    Off a terminal only the changes of state are printed (no byte counts).
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.order = []

    def __call__(self, layer, status, current=None, total=None):
        from ..runtime.layerstream import human
        moving = status in ("Downloading", "Pushing") and current is not None and total
        if not self.tty:
            if not moving:
                self.stream.write(f"{layer}: {status}\n")
                self.stream.flush()
            return
        text = f"{layer}: {status}"
        if moving:
            done = int(50 * min(current, total) / total)
            text += f" [{'=' * max(done - 1, 0)}{'>' if done else ''}{' ' * (50 - done)}] " \
                    f"{human(current)}/{human(total)}"
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
    if not quiet:
        if ":" not in ref.rsplit("/", 1)[-1] and "@" not in ref:
            out.write("Using default tag: latest\n")
        out.write(f"{r.tag or r.digest}: Pulling from {r.path}\n")
        out.flush()
    result = do_pull(ImageStore(root), ref, progress=None if quiet else LayerProgress(out))
    if not quiet:
        out.write(f"Digest: {result.digest}\n")
        shown = r.tagged or str(r)
        if result.downloaded:
            out.write(f"Status: Downloaded newer image for {shown}\n")
        else:
            out.write(f"Status: Image is up to date for {shown}\n")
    out.write(f"{result.reference}\n")
    out.flush()
    return result


def ensure_image(root, ref):
    """`run`'s hook: pull `ref` when the store lacks it (Docker's --pull=missing).

    Costs one read of the tags file when the image is there; busybox:latest and image
    ids are left to the store (it builds busybox itself).
    """
    from ..errors import UsageError
    from ..runtime.images import DEFAULT_IMAGE, ImageStore, parse_reference
    store = ImageStore(root)
    if store.exists(ref):
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
