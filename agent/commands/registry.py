"""`pyinspect login|logout|pull|push|search`: thin click shells over pyinspect.runtime.registry."""

import sys

import click

from .pulling import LayerProgress, pull_image


def _store(obj):
    from ..runtime.images import ImageStore

    return ImageStore(obj["root"])


@click.command()
@click.option("-u", "--username", help="Username.")
@click.option("-p", "--password", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.argument("server", required=False, default="docker.io")
def login(username, password, password_stdin, server):
    """Log in to a registry; credentials go to Docker's config.json (mode 0600).

    The file is $DOCKER_CONFIG/config.json, else ~/.docker/config.json: the one
    `docker login` writes and skopeo reads.

    \b
    Examples:
      echo "$PASS" | pyinspect login -u admin --password-stdin localhost:5000
      pyinspect login registry.example.com
    """
    from ..errors import UsageError
    from ..runtime.registry import credentials
    from ..runtime.registry.client import RegistryClient
    from ..runtime.registry.reference import normalize_domain

    domain = normalize_domain(server)
    if password_stdin:
        if password is not None:
            raise UsageError("login: --password and --password-stdin are exclusive")
        if not username:
            raise UsageError("login: --password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is not None:
        click.echo(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True
        )
    if not username:
        if not sys.stdin.isatty():
            raise UsageError("login: no username", "give -u USER")
        username = click.prompt("Username")
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError("login: no password", "give --password-stdin and pipe it")
        password = click.prompt("Password", hide_input=True)
    if not username or not password:
        raise UsageError("login: username and password must not be empty")
    creds = credentials.Credentials(username, password)
    from ..runtime.image_settings import load_settings

    obj = click.get_current_context().obj
    with RegistryClient(domain, creds, load_settings(obj["root"]).insecure_registries) as c:
        c.login()
    path = credentials.store(domain, creds)
    click.echo(f"WARNING! Your password will be stored unencrypted in {path}.", err=True)
    click.echo("Login Succeeded")


@click.command()
@click.argument("server", required=False, default="docker.io")
def logout(server):
    """Forget the credentials of a registry.

    \b
    Example:
      pyinspect logout localhost:5000
    """
    from ..runtime.registry import credentials
    from ..runtime.registry.reference import normalize_domain

    domain = normalize_domain(server)
    if credentials.remove(domain):
        click.echo(f"Removing login credentials for {server}")
    else:
        click.echo(f"Not logged in to {server}")


@click.command()
@click.option("-q", "--quiet", is_flag=True, help="Print only the image reference.")
@click.argument("name")
@click.pass_obj
def pull(obj, quiet, name):
    """Pull an image from a registry: NAME[:TAG] or NAME@sha256:DIGEST.

    Docker's names: `busybox` is docker.io/library/busybox:latest; `host:port/app`
    names another registry. Plain HTTP only for loopback registries and those under
    "insecure-registries" in the root's config.json. Every blob is verified against its
    digest while it streams; a refused pull stores nothing.

    \b
    Examples:
      pyinspect pull localhost:5000/web:v1
      pyinspect pull localhost:5000/web@sha256:4f1c...
    """
    pull_image(obj["root"], name, quiet)


@click.command()
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    hidden=True,
    help="Upload blobs larger than this in PATCH chunks of this many bytes.",
)
@click.option("-a", "--all-tags", is_flag=True, help="Push every tag of the repository NAME.")
@click.argument("name")
@click.pass_obj
def push(obj, chunk_size, all_tags, name):
    """Push an image to a registry: NAME[:TAG], an image the store has under that name.

    Layers the registry has already (HEAD) are not sent again.

    \b
    Examples:
      pyinspect tag busybox localhost:5000/busybox:v1
      pyinspect push localhost:5000/busybox:v1
      pyinspect push -a localhost:5000/busybox
    """
    from ..runtime.registry.push import CHUNK_SIZE, tags_of
    from ..runtime.registry.push import push as do_push
    from ..runtime.registry.reference import parse

    store = _store(obj)
    r = parse(name)
    names = tags_of(store, name) if all_tags else [name]
    repo = r.familiar if r.domain != "docker.io" else f"docker.io/{r.path}"
    progress = LayerProgress(header=[f"The push refers to repository [{repo}]"])
    for one in names:
        result = do_push(store, one, progress=progress, chunk_size=chunk_size or CHUNK_SIZE)
        progress.flush_header()
        click.echo(f"{result.tag}: digest: {result.digest} size: {result.size}")


@click.command()
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="stars=N, is-official=true|false, is-automated=true|false.")  # fmt: skip
@click.option("--format", "fmt", help="table, json, 'table TEMPLATE' or a Go template.")
@click.option("--limit", type=int, default=25, show_default=True, help="At most this many.")
@click.option("--no-trunc", is_flag=True, help="Do not cut descriptions.")
@click.argument("term")
@click.pass_obj
def search(obj, filters, fmt, limit, no_trunc, term):
    """Search a registry for repositories whose names contain TERM.

    Docker Hub is asked by its search API; a registry named in TERM
    (`localhost:5000/web`) by its catalog (/v2/_catalog), which the Distribution
    registry has where it has no search API.

    \b
    Examples:
      pyinspect search nginx --filter is-official=true
      pyinspect search localhost:5000/eladmin --format '{{.Name}}'
    """
    from ..dockerfmt.psformat import SEARCH_DEFAULT, SEARCH_HEADERS, format_rows, search_row
    from ..runtime.registry.search import search as run_search

    rows = [search_row(r, not no_trunc) for r in run_search(obj["root"], term, limit, filters)]
    for line in format_rows(rows, fmt, SEARCH_DEFAULT, SEARCH_HEADERS):
        click.echo(line)
    return 0
