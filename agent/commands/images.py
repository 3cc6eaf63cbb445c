"""`pyinspect images|load|save|tag|rmi`: thin click shells over pyinspect.runtime.images."""

import json
import sys

import click


def _store(obj):
    from ..runtime.images import ImageStore

    return ImageStore(obj["root"])


def _since(created):
    """'3 hours ago' from an RFC 3339 time, as docker's CREATED column (go-units'
    HumanDuration, as `ps`)."""
    from ..dockerfmt.psformat import parse_time, since

    return f"{since(created)} ago" if parse_time(created or "") is not None else "N/A"


def _rows(images):
    rows = []
    for im in images:
        by_repo = {d.split("@", 1)[0]: d.split("@", 1)[1] for d in im.repo_digests}
        for ref in im.repo_tags or ["<none>:<none>"]:
            repo, tag = ref.rsplit(":", 1)
            rows.append(
                {
                    "Repository": repo,
                    "Tag": tag,
                    "Digest": by_repo.get(repo, "<none>"),
                    "ID": im.short_id,
                    "Id": im.id,
                    "Created": im.created,
                    "CreatedSince": _since(im.created),
                    "Size": im.size,
                }
            )
    return rows


@click.command()
@click.argument("reference", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format (json: one array of rows).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only image ids.")
@click.option("--no-trunc", is_flag=True, help="Full image ids.")
@click.option("--digests", is_flag=True, help="Show the registry digest (of a pull or push).")
@click.pass_obj
def images(obj, reference, fmt, quiet, no_trunc, digests):
    """List images (one row per tag; untagged images show <none>).

    \b
    Examples:
      pyinspect images
      pyinspect images busybox --format json
      pyinspect images -q
      pyinspect images --digests
    """
    from ..units import decimal_size

    found = _store(obj).list()
    rows = _rows(found)
    if reference:
        rows = [r for r in rows if reference in (r["Repository"], f"{r['Repository']}:{r['Tag']}")]
    if quiet:
        seen = []
        for r in rows:
            ident = r["Id"] if no_trunc else r["ID"]
            if ident not in seen:
                seen.append(ident)
        for ident in seen:
            click.echo(ident)
        return
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = [
        ("REPOSITORY", "TAG", *(("DIGEST",) if digests else ()), "IMAGE ID", "CREATED", "SIZE")
    ]
    for r in rows:
        table.append(
            (
                r["Repository"],
                r["Tag"],
                *((r["Digest"],) if digests else ()),
                r["Id"] if no_trunc else r["ID"],
                r["CreatedSince"],
                decimal_size(r["Size"]),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
        click.echo(cells + "   " + row[-1])


@click.command()
@click.option("--no-trunc", is_flag=True, help="Do not cut ids and CREATED BY.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option(
    "-H",
    "--human",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="Sizes and times for people (false: bytes and RFC 3339).",
)
@click.option(
    "--format",
    "fmt",
    metavar="FORMAT",
    help="table, json, 'table TEMPLATE' or a Go template such as '{{.CreatedBy}} {{.Size}}' "
    "(.ID, .CreatedSince, .CreatedAt, .CreatedBy, .Size, .Comment).",
)
@click.argument("image")
@click.pass_obj
def history(obj, no_trunc, quiet, human, fmt, image):
    """Show the steps that made an image, newest first, with the size of each layer.

    \b
    Examples:
      pyinspect history busybox
      pyinspect history --no-trunc --format '{{.CreatedBy}}: {{.Size}}' myblog:v1
    """
    from ..dockerfmt.psformat import HISTORY_DEFAULT, HISTORY_HEADERS, format_rows, history_row

    rows = [history_row(e, not no_trunc, human) for e in _store(obj).history(image)]
    if quiet:
        for r in rows:
            click.echo(r["ID"])
        return 0
    for line in format_rows(rows, fmt, HISTORY_DEFAULT, HISTORY_HEADERS):
        click.echo(line)
    return 0


@click.command()
@click.option(
    "-i",
    "--input",
    "path",
    type=click.Path(exists=False),
    help="docker-save archive or OCI layout (dir or tar, gzip'd or not); default: standard input.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.pass_obj
def load(obj, path, quiet):
    """Load images from a docker-save archive or an OCI image layout.

    Layers are verified against the config's diff_ids, stored once by digest and
    extracted safely; a rejected archive leaves nothing behind.

    \b
    Examples:
      pyinspect load -i busybox.tar
      pyinspect load -i ./oci-layout-dir
      gzip -dc image.tar.gz | pyinspect load
    """
    from ..errors import UsageError

    if path is None:
        if sys.stdin.isatty():
            raise UsageError("load: no input", "give -i FILE or pipe an archive to stdin")
        path = sys.stdin.buffer
    notes: list[str] = []
    loaded = _store(obj).load_images(path, notes=notes)
    for line in notes:
        click.echo(f"note: {line}", err=True)
    for item in loaded:  # the names the archive holds, not every tag the image has
        if quiet:
            continue
        if item.names:
            for t in item.names:
                click.echo(f"Loaded image: {t}")
        else:
            click.echo(f"Loaded image ID: {item.image.id}")


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Archive to write (default: standard output, if not a terminal).",
)
@click.argument("image", nargs=-1, required=True)
@click.pass_obj
def save(obj, output, image):
    """Save images to one archive that `pyinspect load` and `docker load` read.

    \b
    Examples:
      pyinspect save -o busybox.tar busybox
      pyinspect save busybox web:v1 | gzip > images.tar.gz
    """
    from ..errors import UsageError

    store = _store(obj)
    if output:
        store.save(list(image), output)
        return
    if sys.stdout.isatty():
        raise UsageError("save: refusing to write an archive to a terminal", "use -o FILE")
    store.save(list(image), sys.stdout.buffer)
    sys.stdout.buffer.flush()


@click.command()
@click.argument("source")
@click.argument("target")
@click.pass_obj
def tag(obj, source, target):
    """Give the image SOURCE (name, id or id prefix) the name TARGET[:TAG].

    \b
    Example:
      pyinspect tag busybox web:v1
    """
    _store(obj).tag(source, target)


@click.command()
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Remove all tags of an id; for an image a container uses, drop only its tags.",
)
@click.argument("image", nargs=-1, required=True)
@click.pass_obj
def rmi(obj, force, image):
    """Remove images (or just one tag when the image has others).

    \b
    Examples:
      pyinspect rmi web:v1
      pyinspect rmi -f 3f2a1b
    """
    from ..errors import PyinspectError

    store = _store(obj)
    first = None
    for ref in image:
        try:
            for change in store.remove(ref, force=force):
                for key, value in change.items():
                    click.echo(f"{key}: {value}")
        except PyinspectError as exc:
            if first is None:
                first = exc
            if len(image) > 1:
                click.echo(f"Error: {exc}", err=True)
    if first is not None:
        if len(image) > 1:
            raise click.exceptions.Exit(first.exit_code)
        raise first
