"""`search TERM`: repositories a registry holds whose names contain TERM.

Docker Hub answers its search API (`/v1/search` on index.docker.io), as `docker search`
asks it. Any other registry is asked for its catalog (`/v2/_catalog`, page by page, the
`registry:catalog:*` scope): the Distribution registry, which a private registry
usually is, has no search API, so `docker search localhost:5000/x` fails there, while
its catalog lists every repository.
"""

import re
from dataclasses import dataclass
from urllib.parse import quote

from ...errors import UsageError
from ..image_settings import load_settings
from . import credentials
from .client import RegistryClient, RegistryUnavailable
from .reference import DEFAULT_DOMAIN, normalize_domain

HUB_SEARCH = "https://index.docker.io/v1/search"
MAX_LIMIT = 100  # Docker's
CATALOG_PAGE = 1000
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class SearchResult:
    """One repository found: Docker's search fields."""

    name: str
    description: str = ""
    stars: int = 0
    official: bool = False
    automated: bool = False


@dataclass(frozen=True)
class SearchFilter:
    """`--filter`s: stars=N (at least N), is-official=BOOL, is-automated=BOOL."""

    stars: int = 0
    official: bool | None = None
    automated: bool | None = None

    @classmethod
    def parse(cls, items) -> "SearchFilter":
        """From Docker's `KEY=VALUE` texts; UsageError naming a bad one."""
        values: dict = {}
        for item in items:
            key, eq, value = str(item).partition("=")
            try:
                if not eq:
                    raise ValueError
                if key == "stars":
                    values["stars"] = int(value)
                elif key in ("is-official", "is-automated"):
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError
                    values[key[3:]] = value.lower() in ("true", "1")
                else:
                    raise UsageError(f"Invalid filter '{key}'")
            except ValueError:
                raise UsageError(f"Invalid filter '{item}'") from None
        return cls(**values)

    def matches(self, r: "SearchResult") -> bool:
        return (
            r.stars >= self.stars
            and self.official in (None, r.official)
            and self.automated in (None, r.automated)
        )


def split_term(term: str) -> tuple[str, str]:
    """(registry, text) of `docker search`'s TERM: `localhost:5000/web` searches
    localhost:5000 for "web"; a first part without '.', ':' or 'localhost' is text."""
    first, slash, rest = term.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return normalize_domain(first), rest
    return DEFAULT_DOMAIN, term


def search(root, term: str, limit: int = 25, filters=()) -> list[SearchResult]:
    """Repositories whose names contain TERM's text on TERM's registry (Docker Hub when
    TERM names none): the first `limit` found, less those `filters` (Docker's KEY=VALUE
    texts) leave out, as Docker filters after its limit."""
    wanted = SearchFilter.parse(filters)
    return [r for r in _found(root, term, limit) if wanted.matches(r)]


def _found(root, term: str, limit: int) -> list[SearchResult]:
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"invalid --limit {limit}: between 1 and {MAX_LIMIT}")
    domain, text = split_term(term)
    if not text.strip():
        raise UsageError(f"search {term!r}: nothing to search for")
    settings = load_settings(root)
    with RegistryClient(domain, credentials.get(domain), settings.insecure_registries) as client:
        if domain == DEFAULT_DOMAIN:
            return _hub(client, text, limit)
        return _catalog(client, text, limit)


def _hub(client: RegistryClient, text: str, limit: int) -> list[SearchResult]:
    what = "search on Docker Hub"
    answer = client.get_json(f"{HUB_SEARCH}?q={quote(text)}&n={limit}", what)
    try:
        return [
            SearchResult(
                str(r["name"]),
                str(r.get("description") or ""),
                int(r.get("star_count") or 0),
                bool(r.get("is_official")),
                bool(r.get("is_automated")),
            )
            for r in answer["results"][:limit]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryUnavailable(f"{what}: unexpected answer ({exc})") from None


def _catalog(client: RegistryClient, text: str, limit: int) -> list[SearchResult]:
    """Every page of the catalog, the names containing `text` (case-insensitive)."""
    want, found = text.lower(), list[str]()
    url = f"/v2/_catalog?n={CATALOG_PAGE}"
    what = f"catalog of {client.domain}"
    while url and len(found) < limit:
        resp = client.request("GET", url, scope="registry:catalog:*", what=what)
        if resp.status_code != 200:
            raise client.fail(resp, what)
        try:
            names = resp.json()["repositories"] or []
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable(f"{what}: unexpected answer ({exc})") from None
        found += [f"{client.domain}/{n}" for n in names if want in str(n).lower()]
        link = _NEXT.search(resp.headers.get("Link", ""))
        url = link.group(1) if link else ""
        if url and "://" not in url:
            url = "/" + url.lstrip("/")
    return [SearchResult(name) for name in found[:limit]]
