"""Broker URLs with one host or several: ``amqp://user:pass@h1:5672,h2:5672,h3/vhost``.

The form other AMQP clients accept for a cluster: hosts separated by commas, each with
its own optional port (default 5672, or 5671 for ``amqps://``), sharing the user, the
password, the vhost and the query. ``urllib`` cannot read such a URL (its ``port``
raises), so it is split here, once, into parts that know how to put themselves back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)  # libpq's ?password=


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker URL; ``password`` is kept apart and never part of ``str()``."""

    scheme: str
    user: str | None
    password: str | None
    hosts: tuple[tuple[str, int | None], ...]  # (host, port or None for the default)
    path: str
    query: str

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Split ``url``; ``ValueError`` naming the part that is wrong (never the password)."""
        parts = urlsplit(url)
        userinfo, at, hostlist = parts.netloc.rpartition("@")
        user: str | None = None
        password: str | None = None
        if at:
            name, colon, secret = userinfo.partition(":")
            user = unquote(name)
            password = unquote(secret) if colon else None
        hosts = tuple(_host(item) for item in hostlist.split(",")) if hostlist else ()
        if parts.scheme in DEFAULT_PORTS and not hosts:
            raise ValueError("the broker URL names no host")
        return cls(parts.scheme, user, password, hosts, parts.path, parts.query)

    def _netloc(self, hosts: tuple[tuple[str, int | None], ...], password: str | None) -> str:
        text = ",".join(_format_host(host, port) for host, port in hosts)
        if self.user is None:
            return text
        userinfo = quote(self.user, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"{userinfo}@{text}"

    def __str__(self) -> str:
        """The URL without its password, every host kept: safe to log."""
        return urlunsplit((self.scheme, self._netloc(self.hosts, None), self.path, self.query, ""))

    def addresses(self) -> list[str]:
        """``host:port`` of every host, the default port filled in."""
        default = DEFAULT_PORTS.get(self.scheme, 5672)
        return [_format_host(host, port or default) for host, port in self.hosts]

    def for_host(self, index: int, password: str | None) -> str:
        """A one-host URL for a client library, ``password`` included: never log it."""
        default = DEFAULT_PORTS.get(self.scheme, 5672)
        host, port = self.hosts[index]
        netloc = self._netloc(((host, port or default),), password)
        return urlunsplit((self.scheme, netloc, self.path, self.query, ""))


def _host(item: str) -> tuple[str, int | None]:
    item = item.strip()
    if item.startswith("["):  # an IPv6 literal: [::1]:5672
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"host {item!r}: expected [address]:port")
    else:
        host, colon, port_text_or_empty = item.partition(":")
        port_text = port_text_or_empty if colon else None
    if not host:
        raise ValueError(f"host {item!r} has no name")
    if port_text is None or port_text == "":
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"host {item!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _format_host(host: str, port: int | None) -> str:
    text = f"[{host}]" if ":" in host else host
    return text if port is None else f"{text}:{port}"


def _split_netloc(url: str) -> tuple[str, str, str] | None:
    """``scheme://``, the part before the host (``user:password``) and the rest; None
    for a URL without user information."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    userinfo, at, _ = rest.rpartition("@")
    if not at:
        return None
    if "/" in userinfo or "?" in userinfo:  # the "@" was in the path or the query
        return None
    return scheme + sep, userinfo, rest[len(userinfo) :]


def redact(url: str) -> str:
    """``url`` with its password (user information or ``?password=``) shown as ``***``:
    for any URL kanin is given (broker, management, Redis, PostgreSQL). Safe to log."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    parts = _split_netloc(url)
    if parts is None:
        return url
    start, userinfo, rest = parts
    user, colon, _ = userinfo.partition(":")
    return f"{start}{user}:***{rest}" if colon else url


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its user information (replacing any there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL with a host: cannot put a password in it")
    parts = _split_netloc(url)
    user, rest = (parts[1].partition(":")[0], parts[2][1:]) if parts else ("", rest)
    return f"{scheme}{sep}{user}:{quote(password, safe='')}@{rest}"
