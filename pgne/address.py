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
    return host.strip("[]") or ANY_HOST, int(port)


def url_host(host: str) -> str:
    """`host` as it stands in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
