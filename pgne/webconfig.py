"""`--web.config.file`: TLS and basic auth for the HTTP server, in the format of the Prometheus
exporter-toolkit (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md):

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                         # optional
      min_version: TLS12                             # optional
    basic_auth_users:
      alice: $2y$10$...                              # bcrypt hashes

Keys of the toolkit that pgne does not implement are rejected, not ignored.
"""
from __future__ import annotations

import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pgne.errors import UserError
from pgne.password_checks import PasswordChecks
from pgne.yamlfile import read_bounded, read_yaml, shown_path

# Python's ssl verifies every client certificate it asks for, so the toolkit's two modes that
# accept unverified certificates (RequestClientCert, RequireAnyClientCert) are not offered.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version"}
TOP_KEYS = {"tls_server_config", "basic_auth_users"}


# One for the process: every password check of the HTTP server takes its turn through it.
PASSWORD_CHECKS = PasswordChecks()


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _verified: set[tuple[str, str]] = field(default_factory=set)  # bcrypt is slow: remember successes
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dummy: bytes | None = None  # checked for unknown users: see dummy_hash()

    def dummy_hash(self) -> bytes:
        """A hash of a random password at the cost most users' hashes have (the highest of the
        most common): an unknown user costs one bcrypt run as a wrong password does, so the
        time of a 401 does not tell which user names exist (as Prometheus' exporter-toolkit).
        No cost is right for every unknown name: a user whose hash has another cost than the
        dummy's answers in another time, so that user's existence shows (README: one cost)."""
        import bcrypt

        with self._lock:
            if self._dummy is None:
                costs = [int(hashed[4:6]) for hashed in self.users.values()] or [12]
                cost = max(costs, key=lambda c: (costs.count(c), c))
                self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
            return self._dummy

    def check_password(self, user: str, password: str, client: str) -> bool:
        """Whether `password` is `user`'s; AuthBusy when `client` (the address the request
        came from) or too many clients already have a check waiting (PasswordChecks)."""
        import bcrypt

        hashed = self.users.get(user)
        if hashed is not None:
            with self._lock:
                if (user, password) in self._verified:
                    return True
        # the same work whether the user exists or not; only a success is remembered
        candidate = hashed if hashed is not None else self.dummy_hash()
        try:
            with PASSWORD_CHECKS.turn(client):
                ok = bcrypt.checkpw(password.encode("utf-8"), candidate)
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes (for any user alike)
            ok = False
        if ok and hashed is not None:
            with self._lock:
                self._verified.add((user, password))
            return True
        return False


MAX_WEB_CONFIG_BYTES = 1024 * 1024
BCRYPT_HASH_RE = re.compile(r"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}\Z")
PATH_KEYS = ("cert_file", "key_file", "client_ca_file")


def load_web_config(path: str) -> WebConfig:
    """Every problem at once, each naming the key; exit 2 (UserError), never a traceback."""
    where = f"--web.config.file {shown_path(path)}"
    try:
        text = read_bounded(path, MAX_WEB_CONFIG_BYTES).decode("utf-8")
    except OSError as exc:
        raise UserError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: cannot read: {exc}") from None
    try:
        data = read_yaml(where, text)
    except UserError as exc:
        if not exc.lines[0].endswith("every YAML document is empty)"):
            raise
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping")
    errors = [f"{where}: unknown key {k!r} (supported: {', '.join(sorted(TOP_KEYS))})"
              for k in data if k not in TOP_KEYS]
    config = WebConfig()
    base = Path(path).resolve().parent

    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        errors.append(f"{where}: basic_auth_users: expected a mapping of user -> bcrypt hash")
        users = {}
    for user, hashed in users.items():
        if isinstance(user, bool) or not isinstance(user, (str, int)):  # `123:` is the user "123"
            errors.append(f"{where}: basic_auth_users: user {user!r} is not a user name")
        elif not isinstance(hashed, str) or not BCRYPT_HASH_RE.match(hashed):
            # bcrypt's own check would raise on a hash that is not ASCII, or not 60 characters
            errors.append(f"{where}: basic_auth_users > {user}: not a bcrypt hash "
                          f"($2a$, $2b$ or $2y$, cost, then 53 characters of ./A-Za-z0-9)")
        else:
            config.users[str(user)] = hashed.encode("ascii")

    tls = data.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict):
            errors.append(f"{where}: tls_server_config: expected a mapping")
        else:
            errors += [f"{where}: tls_server_config: unsupported key {k!r} (supported: {', '.join(sorted(TLS_KEYS))})"
                       for k in tls if k not in TLS_KEYS]
            for required in ("cert_file", "key_file"):
                if not tls.get(required):
                    errors.append(f"{where}: tls_server_config > {required} is required")
            for key in PATH_KEYS:
                value = tls.get(key)
                if value is None or value == "":
                    continue
                if not isinstance(value, str):
                    errors.append(f"{where}: tls_server_config > {key}: expected a file name, got {value!r}")
                elif "\x00" in value:
                    errors.append(f"{where}: tls_server_config > {key}: {value!r} contains a NUL character")
            auth = tls.get("client_auth_type", "NoClientCert")
            if not isinstance(auth, str) or auth not in CLIENT_AUTH_TYPES:
                errors.append(f"{where}: tls_server_config > client_auth_type: {auth!r} is not one of "
                              f"{', '.join(CLIENT_AUTH_TYPES)}")
            version = tls.get("min_version", "TLS12")
            if not isinstance(version, str) or version not in TLS_VERSIONS:
                errors.append(f"{where}: tls_server_config > min_version: {version!r} is not one of "
                              f"{', '.join(TLS_VERSIONS)}")
            if not errors:
                config.ssl_context = _ssl_context(where, base, tls, auth, version)
    if errors:
        raise UserError(errors)
    if config.users:
        config.dummy_hash()  # now, not in the first unknown user's answer
    return config


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL asks for the passphrase of an encrypted key on the terminal.
    raise _EncryptedKey


class _EncryptedKey(Exception):
    pass


def _ssl_context(where: str, base: Path, tls: dict, auth: str, version: str) -> ssl.SSLContext:
    def resolve(name: str) -> str:
        p = Path(tls[name]).expanduser()
        return str(p if p.is_absolute() else base / p)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[version]
    try:
        context.load_cert_chain(resolve("cert_file"), resolve("key_file"), password=_no_passphrase)
        if tls.get("client_ca_file"):
            context.load_verify_locations(resolve("client_ca_file"))
        elif auth != "NoClientCert":
            raise UserError(f"{where}: tls_server_config > client_auth_type {auth} needs client_ca_file")
    except _EncryptedKey:
        raise UserError(f"{where}: tls_server_config > key_file: {shown_path(tls['key_file'])} is encrypted "
                        f"(protected by a passphrase); pgne needs an unencrypted key") from None
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"{where}: tls_server_config: {getattr(exc, 'strerror', None) or exc}") from None
    context.verify_mode = CLIENT_AUTH_TYPES[auth]
    return context
