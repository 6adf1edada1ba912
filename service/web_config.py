"""The web configuration file of Prometheus, Alertmanager and the exporters (exporter-toolkit's format).

``anomaly-detector run --web.config.file FILE`` (or ``web_config_file:`` in
the service configuration) reads the same YAML as ``prometheus
--web.config.file``::

    tls_server_config:
      cert_file: server.crt          # paths are relative to this file's directory
      key_file: server.key
      client_ca_file: clients.crt    # with client_auth_type Verify... or Require...
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12             # TLS12 (default) or TLS13
    basic_auth_users:                # user name: bcrypt hash (htpasswd -nB alice)
      alice: $2b$12$...

Unknown keys are errors.  A password written in plain text instead of its
bcrypt hash is refused, naming the line but never repeating the value.  The
file is read once at start; a change needs a restart.

Two client-certificate modes of Go's TLS have no Python equivalent:
``RequestClientCert`` asks for a certificate nobody looks at, so it is served
as ``NoClientCert``; ``RequireAnyClientCert`` (a certificate required but not
verified) is refused, since Python verifies every certificate it requires.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "web.yml"
>>> _ = path.write_text("basic_auth_users:\\n  alice: secret\\n")
>>> load_web_config(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
detector.config.ConfigError: .../web.yml:2: basic_auth_users.alice: not a bcrypt hash ...
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from detector.config import ConfigError, YamlDocument

#: ``$2a$``, ``$2b$`` or ``$2y$``, a cost of 04–31, then 22 characters of salt and 31 of hash.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

#: The hash in ``examples/web-config.yml``, of its published password: refused off loopback.
EXAMPLE_HASH = "$2b$12$uVWbAyutFy9fztosff1fbuG8YmtgHZhkfuwLcdRLzKHelQ64VS2pa"

ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]

_MIN_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CERT_REQS = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


def _bcrypt_hash(value: object) -> str:
    # The value may be a real password: never put it in the message.
    if isinstance(value, str) and _BCRYPT.fullmatch(value):
        return value
    raise ValueError(
        "not a bcrypt hash (a password must be stored hashed, never in plain text); "
        "write the hash: htpasswd -nBC 12 '' | tr -d ':\\n', or "
        "python3 -c 'import bcrypt, getpass; "
        "print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'"
    )


BcryptHash = Annotated[SecretStr, BeforeValidator(_bcrypt_hash)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSServerConfig(_Section):
    """Serve HTTPS with this certificate; optionally ask clients for theirs."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    min_version: Literal["TLS12", "TLS13"] = "TLS12"

    @model_validator(mode="after")
    def _client_auth_possible(self) -> TLSServerConfig:
        if self.client_auth_type == "RequireAnyClientCert":
            raise ValueError(
                "client_auth_type RequireAnyClientCert (a certificate required but not verified) is not "
                "available in Python's TLS; use RequireAndVerifyClientCert with client_ca_file"
            )
        verifies = self.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
        if verifies and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file to verify with")
        if not verifies and self.client_ca_file is not None:
            raise ValueError(
                "client_ca_file is set but client_auth_type does not check client certificates; "
                "set client_auth_type: RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
            )
        return self

    @property
    def requires_client_certificate(self) -> bool:
        """Every client proves who it is with a certificate the CA signed."""
        return self.client_auth_type == "RequireAndVerifyClientCert"

    def context(self) -> ssl.SSLContext:
        """The server's TLS context; raises ``OSError`` or ``ssl.SSLError`` for unusable files."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _MIN_VERSIONS[self.min_version]
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = _CERT_REQS[self.client_auth_type]
        if self.client_ca_file is not None:
            context.load_verify_locations(self.client_ca_file)
        return context


class WebConfig(_Section):
    """The whole file; an empty file is valid and changes nothing."""

    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, BcryptHash] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _usable_user_names(self) -> WebConfig:
        for user in self.basic_auth_users:
            if ":" in user or not user:
                raise ValueError(
                    f"user name {user!r} cannot log in: basic auth needs a non-empty name without ':'"
                )
        return self


def load_web_config(path: Path) -> WebConfig:
    """Read and check a web configuration file; relative paths in it are relative to its directory.

    Raises :class:`detector.config.ConfigError` naming the file, the line and
    the key, for invalid YAML, unknown keys, a plaintext password, or a
    certificate or key that cannot be loaded.
    """
    document = YamlDocument.read(path)
    if document.data is None:
        return WebConfig()
    web = document.validate(WebConfig)
    tls = web.tls_server_config
    if tls is not None:
        for key in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(tls, key)
            if value is None:
                continue
            if not value.is_absolute():
                value = path.parent / value
                setattr(tls, key, value)
            if not value.is_file():
                raise ConfigError(
                    f"{_where(document, path, key)}: tls_server_config.{key}: {value} does not exist; "
                    "give a PEM file (a relative path is relative to this file)"
                )
        try:
            tls.context()
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"{_where(document, path, 'cert_file')}: tls_server_config: cannot use "
                f"{tls.cert_file}, {tls.key_file}"
                + (f", {tls.client_ca_file}" if tls.client_ca_file else "")
                + f" ({getattr(error, 'reason', None) or error}); give a PEM certificate, its own "
                "private key (unencrypted) and PEM client CA certificates"
            ) from None
    return web


def _where(document: YamlDocument, path: Path, key: str) -> str:
    line = document.line_of(("tls_server_config", key))
    return f"{path}:{line}" if line is not None else str(path)
