"""Files from the package index pip is set up to use: look up, download, verify.

taskdiv fetches data packages (the BIG-bench sdist) without asking pip to build or
resolve them: current pip prepares an sdist's metadata even for `pip download
--no-deps`, and bigbench 1.0.0 declares a direct-URL dependency pip refuses. Instead
this module reads pip's settings (`python -m pip config list` and the PIP_*
environment, so no host is written into the code), finds the file on each source in
turn, streams it with a progress bar and checks its sha256.

Sources, tried in this order until one lists the file:
    find-links       local directories, or HTML pages of links
    index-url        a simple index, PEP 691 JSON or PEP 503 HTML (default: pip's, https://pypi.org/simple)
    extra-index-url  further simple indexes (file:// indexes included)
Settings come from the `:env:` (PIP_*) entries first, then pip's [download], [install]
and [global] sections. `no-index`, `cert`, `proxy`, `timeout` and credentials written
in an index URL (https://user:token@host/simple) are honoured; keyring and netrc are not.
"""
from __future__ import annotations

import ast
import base64
import hashlib
import http.client
import json
import logging
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from . import progress
from .errors import TaskdivError

log = logging.getLogger(__name__)

PYPI = "https://pypi.org/simple"  # pip's own default index-url
ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.1, "
          "text/html;q=0.01")
SECTIONS = (":env:", "download", "install", "global")  # first wins


@dataclass(frozen=True)
class Settings:
    """The parts of pip's configuration that say where files come from."""

    index_url: str = PYPI
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    cert: str | None = None
    proxy: str | None = None
    timeout: float = 15.0  # pip's default

    def sources(self) -> list[tuple[str, str]]:
        """(kind, location) in the order they are tried; kind is 'find-links' or 'index'."""
        indexes = [] if self.no_index else [self.index_url, *self.extra_index_urls]
        return [("find-links", f) for f in self.find_links] + [("index", i) for i in indexes]


@dataclass(frozen=True)
class Link:
    url: str
    sha256: str | None  # as published by the source; None for a bare directory listing
    source: str


def pip_settings(python: str = sys.executable) -> Settings:
    """pip's settings as `python -m pip config list` and the environment give them."""
    items: dict[str, dict[str, str]] = {}
    try:
        proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=120)
        lines = proc.stdout.splitlines() if proc.returncode == 0 else []
        if proc.returncode != 0:
            log.info("`pip config list` failed (%s); using the PIP_* environment only", proc.stderr.strip()[-200:])
    except (OSError, subprocess.TimeoutExpired) as e:
        log.info("`pip config list` did not run (%s); using the PIP_* environment only", e)
        lines = []
    for line in lines:  # e.g.  global.extra-index-url='file:///a file:///b'   :env:.find-links='/opt/wheels'
        key, sep, raw = line.partition("=")
        section, dot, name = key.rpartition(".")
        if not (sep and dot):
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        items.setdefault(_option(name), {})[section] = str(value)
    # Older pips do not list the environment; it overrides every file anyway.
    for var, value in os.environ.items():
        if var.startswith("PIP_"):
            items.setdefault(_option(var[4:]), {})[":env:"] = value

    def get(*names: str) -> str | None:
        for section in SECTIONS:
            for name in names:
                if section in items.get(name, {}):
                    return items[name][section]
        return None

    try:
        timeout = float(get("timeout", "default-timeout") or 15.0)
    except ValueError:
        timeout = 15.0
    return Settings(index_url=get("index-url") or PYPI,
                    extra_index_urls=tuple((get("extra-index-url") or "").split()),
                    find_links=tuple((get("find-links") or "").split()),
                    no_index=(get("no-index") or "").strip().lower() in ("1", "true", "yes", "on"),
                    cert=get("cert") or None, proxy=get("proxy") or None,
                    timeout=timeout)


def _option(name: str) -> str:
    return name.strip().lstrip("-").lower().replace("_", "-")


def _normalize(project: str) -> str:
    from packaging.utils import canonicalize_name  # PEP 503, as pip itself spells index pages

    return canonicalize_name(project)


class _Links(HTMLParser):
    """The <a href> targets of a PEP 503 page (and its <base href>, if any)."""

    def __init__(self) -> None:
        super().__init__()
        self.base: str | None = None
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "base" and attrs.get("href") and self.base is None:
            self.base = attrs["href"]
        elif tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


class Client:
    """urllib with pip's cert, proxy, timeout and index credentials."""

    def __init__(self, settings: Settings):
        self.settings = settings
        context = ssl.create_default_context()
        if settings.cert and Path(settings.cert).is_dir():
            context.load_verify_locations(capath=settings.cert)
        elif settings.cert and Path(settings.cert).is_file():
            context.load_verify_locations(cafile=settings.cert)
        elif settings.cert:
            log.warning("pip's cert %s does not exist; using the system's certificates", settings.cert)
        handlers: list = [urllib.request.HTTPSHandler(context=context)]
        if settings.proxy:
            handlers.append(urllib.request.ProxyHandler({"http": settings.proxy, "https": settings.proxy}))
        self.opener = urllib.request.build_opener(*handlers)
        self.auth: dict[str, str] = {}  # host -> Authorization header, from user:token@ in index URLs

    def strip_auth(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.username is None:
            return url
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        self.auth[parts.hostname or ""] = "Basic " + base64.b64encode(token.encode()).decode()
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def open(self, url: str, accept: str | None = None):
        request = urllib.request.Request(url)
        if accept:
            request.add_header("Accept", accept)
        host = urllib.parse.urlsplit(url).hostname or ""
        if host in self.auth:  # not passed on to a redirect's host (pip does not either)
            request.add_unredirected_header("Authorization", self.auth[host])
        return self.opener.open(request, timeout=self.settings.timeout)


def _local_path(location: str) -> Path | None:
    """The path a find-links/index location names on this machine (None for http(s))."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    return Path(location).expanduser().absolute()  # a bare path, as find-links allows


def _page_links(client: Client, url: str, filename: str, source: str) -> Link | None:
    """The link to `filename` on one simple-index or find-links page (JSON or HTML)."""
    local = _local_path(url)
    if local is not None:
        if local.is_dir():  # a file:// index: pip reads the project directory's index.html
            local = local / "index.html"
        if not local.is_file():
            return None
        url, text, content_type = local.as_uri(), local.read_text(encoding="utf-8", errors="replace"), "text/html"
    else:
        try:
            with client.open(url, ACCEPT) as response:
                content_type = response.headers.get("Content-Type", "")
                text = response.read().decode("utf-8", errors="replace")
                url = response.geturl()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
    if "json" in content_type:
        for entry in json.loads(text).get("files", []):
            if entry.get("filename") == filename:
                return Link(urllib.parse.urljoin(url, entry["url"]), entry.get("hashes", {}).get("sha256"), source)
        return None
    parser = _Links()
    parser.feed(text)
    base = urllib.parse.urljoin(url, parser.base) if parser.base else url
    for href in parser.hrefs:
        target = urllib.parse.urljoin(base, href)
        path, _, fragment = target.partition("#")
        if urllib.parse.unquote(path.rsplit("/", 1)[-1]) == filename:
            digest = dict(p.split("=", 1) for p in fragment.split("&") if "=" in p).get("sha256")
            return Link(path, digest, source)
    return None


def find(client: Client, project: str, filename: str) -> tuple[Link | None, list[str]]:
    """The first source's link to `filename`, and why each earlier source gave none."""
    tried: list[str] = []
    for kind, location in client.settings.sources():
        location = client.strip_auth(location)
        try:
            if kind == "index":
                page = location.rstrip("/") + "/" + _normalize(project) + "/"
                link = _page_links(client, page, filename, page)
            else:
                local = _local_path(location)
                if local is not None and local.is_dir():
                    local = local / filename
                if local is not None and local.name == filename:  # a directory's file, or the file itself
                    link = Link(local.as_uri(), None, location) if local.is_file() else None
                else:
                    link = _page_links(client, location, filename, location)
        except (OSError, ValueError, http.client.HTTPException) as e:
            tried.append(f"{location}: {_why(e)}")
            continue
        if link is not None:
            return link, tried
        tried.append(f"{location}: does not list {filename}")
    if not tried:
        tried.append("no source configured (pip's no-index is set and there are no find-links)")
    return None, tried


def _why(error: Exception) -> str:
    """A short reason for a failed request: an HTTP status, or why the host was unreachable."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"unreachable ({error.reason})"
    if isinstance(error, ConnectionError) and "closed after" in str(error):
        return str(error)
    if isinstance(error, (ConnectionError, TimeoutError)):
        return f"unreachable ({error})"
    return f"{type(error).__name__}: {error}"


def download(client: Client, link: Link, dest: Path, sha256: str, size: int | None = None) -> None:
    """Stream `link` into `dest` (which the caller removes on failure) and check its sha256."""
    if link.sha256 and link.sha256.lower() != sha256:
        raise TaskdivError(f"{link.source} publishes sha256 {link.sha256} for {link.url}, "
                           f"not the expected {sha256}; refused")
    digest = hashlib.sha256()
    name = link.url.rsplit("/", 1)[-1]
    received = 0
    with client.open(link.url) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or size
        with progress.bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total and received < total:  # a dropped connection, not a different file
        raise ConnectionError(f"the connection closed after {received:,} of {total:,} bytes")
    if digest.hexdigest() != sha256:
        raise TaskdivError(f"{link.url}: the downloaded file's sha256 is {digest.hexdigest()}, "
                           f"not the expected {sha256}; refused.")


def fetch(project: str, filename: str, dest: Path, *, sha256: str, size: int | None = None,
          settings: Settings | None = None) -> str:
    """Download `filename` of `project` into `dest` from the first source that has it and
    yields the expected sha256; returns the URL. Fails naming every source tried."""
    client = Client(settings or pip_settings())
    link, tried = find(client, project, filename)
    if link is not None:
        log.info("downloading %s", link.url)
        try:
            download(client, link, dest, sha256, size)
            return link.url
        except (OSError, http.client.HTTPException) as e:
            tried.append(f"{link.url}: download failed, {_why(e)}")
    unreachable = any("unreachable" in t for t in tried)
    raise TaskdivError(
        f"could not fetch {filename} from the package index pip is set up to use"
        f"{' (the registry could not be reached)' if unreachable else ''}: " + "; ".join(tried)
        + ". Check the network, or pip's index settings (`python -m pip config list`).")
