"""`--listen-address HOST:PORT`: parsed in one place (pgne run, pgne demo)."""
from __future__ import annotations

from pgne.errors import UserError

ANY_HOST = "0.0.0.0"  # an empty HOST, as in `:9292`


def parse_listen_address(text: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT`; an IPv6 host may be in brackets (`[::1]:9292`); an empty
    host is ANY_HOST. UserError if it is not HOST:PORT with a port in 1..65535."""
    host, sep, port = text.rpartition(":")
    # isdigit() alone accepts "²" (int() then fails) and "９２９２"
    if not sep or not (port.isascii() and port.isdigit()):
        raise UserError(f"--listen-address {text!r}: expected HOST:PORT")
    if not 0 < int(port) < 65536:
        raise UserError(f"--listen-address {text!r}: port {int(port)} out of range (1 to 65535)")
    host = host.strip("[]") or ANY_HOST
    _check_host(text, host)
    return host, int(port)


def _check_host(text: str, host: str) -> None:
    """A host that no resolver could be asked about is a bad argument (exit 2), like a bad port:
    a NUL, or a non-ASCII name that IDNA cannot encode (an empty label, a label over 63
    characters), which the socket module refuses with a TypeError. A well-formed name that does
    not resolve is `run`'s "cannot listen" (exit 3): it may resolve later."""
    if "\x00" in host:
        raise UserError(f"--listen-address {text!r}: the host contains a NUL character")
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError as exc:
            reason = str(exc.__cause__ or exc).removeprefix("UnicodeError: ")
            raise UserError(f"--listen-address {text!r}: {host!r} is not a host name ({reason})") from None


def url_host(host: str) -> str:
    """`host` as it stands in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
