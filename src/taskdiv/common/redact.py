"""Secrets in addresses, kept out of every message, log line, traceback and written config.

    display_uri("s3://KEY:SECRET@bucket/run")      -> "s3://KEY:***@bucket/run"
    display_uri("admin:Pa55word@head:6379")       -> "admin:***@head:6379"
    redact("cannot open s3://KEY:SECRET@bucket")   -> the same with SECRET masked

An address may carry credentials (--shards s3://KEY:SECRET@bucket/..., --ray-address or
$RAY_ADDRESS user:password@host:port). Their userinfo is read by hand, not by urlsplit:
an AWS secret often holds a '/', which ends urlsplit's host part and would leave the
rest of the secret in the "path". Every password `display_uri` sees is remembered, and
`redact` masks each remembered one (as written, percent-decoded and percent-encoded) in
any text, besides any userinfo it finds there itself.

The one place everything goes through: `config.build` remembers every secret in a
command's options (flags, --config YAML, an experiment's stage options) and
`distributed.connect` the one in $RAY_ADDRESS; `config.to_dict`, what run directories
record, shows addresses through `display_uri`; the CLI redacts the error line it prints,
every log record (a filter on its log handler) and a traceback (its excepthook). A config
file may not hold credentials at all (`config.load_yaml`): it is meant to be committed.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote

MASK = "***"
# [scheme://]user:secret@rest. The user stops at ':', '@' or '/'; the secret runs to the
# last '@' (a secret may hold '/' or '@'; a '@' later in a path masks more, never less) and
# holds no white space (so a prompt template such as 'Q: {q} @x' is no address).
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
_USERINFO = re.compile(rf"^(?:(?P<head>{_SCHEME})|(?!{_SCHEME}))(?P<user>[^:@/\s]*):(?P<secret>\S+)@(?P<rest>[^@]*)$")
# The same inside free text (a library's message quoting an address): scheme://user:secret@.
_IN_TEXT = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):(?P<secret>[^@\s]+)@")
_SECRETS: set[str] = set()


def split_userinfo(address: str) -> tuple[str, str, str, str] | None:
    """(scheme://, user, secret, rest) of an address with a password in it, else None."""
    m = _USERINFO.match(address)
    if m is None or not m["secret"]:
        return None
    return m["head"] or "", m["user"], m["secret"], m["rest"]


def remember(secret: str) -> None:
    """Mask `secret` (and its percent-decoded and -encoded forms) in everything `redact` sees."""
    for form in (secret, unquote(secret), quote(unquote(secret), safe="")):
        if form:
            _SECRETS.add(form)


def display_uri(address: str) -> str:
    """`address` with the password of credentials written into it masked (remembered for
    `redact`); any other text unchanged."""
    parts = split_userinfo(address) if isinstance(address, str) else None
    if parts is None:
        return address
    head, user, secret, rest = parts
    remember(secret)
    return f"{head}{user}:{MASK}@{rest}"


def remember_in(value) -> None:
    """`display_uri` over every text in `value` (a dict, list or scalar), for its secrets."""
    if isinstance(value, str):
        display_uri(value)
    elif isinstance(value, dict):
        for v in value.values():
            remember_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            remember_in(v)


def shown(value):
    """`value` with `display_uri` applied to every text in it (dicts and lists rebuilt)."""
    if isinstance(value, str):
        return display_uri(value)
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shown(v) for v in value)
    return value


def redact(text: str) -> str:
    """`text` with every remembered secret, and any scheme://user:secret@ in it, masked."""
    text = _IN_TEXT.sub(lambda m: (remember(m["secret"]), f"{m['head']}:{MASK}@")[1], text)
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: a form may hold another
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message (arguments merged in) and its traceback text, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: left to the handler to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
