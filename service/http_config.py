"""Credentials and TLS for the requests the service makes, in Prometheus's ``http_config`` shape.

Every outgoing HTTP client (the Prometheus reader and each sink) takes the
same keys inline in its section, as a Prometheus scrape config or an
``alertmanager_config`` does::

    basic_auth:    {username: ..., password: ... | password_file: ...}
    authorization: {type: Bearer, credentials: ... | credentials_file: ...}
    tls_config:    {ca_file, cert_file, key_file, server_name, insecure_skip_verify}

``basic_auth`` and ``authorization`` exclude each other, and each secret is
given inline or as a file, not both.  Files are read when the configuration is
validated (at start, and by ``check-config``); a relative path is relative to
the configuration file, and a file that cannot be read is an error naming its
key.  Secrets are :class:`pydantic.SecretStr`, so no ``repr`` or log line
shows them, and a secret left at a placeholder (``change-me``, ``<token>``,
``TODO`` …) is refused: :func:`check_secret`.

:func:`http_client` builds the ``httpx.Client`` a configuration describes (the
sinks use it); :func:`httpx_arguments` gives its arguments (an
``Authorization`` header, ``verify`` as an SSL context, the server name) to
combine with others.  :func:`requests_session` builds the same thing as a
``requests.Session``, for prometheus-api-client, which the Prometheus reader
is built on.

>>> config = HTTPClientConfig.model_validate({"authorization": {"credentials": "tok-3f9a1c7e"}})
>>> config.authorization
Authorization(type='Bearer', credentials=SecretStr('**********'), credentials_file=None)
>>> http_client(config).headers["Authorization"] == "Bearer tok-3f9a1c7e"
True
>>> HTTPClientConfig.model_validate({"basic_auth": {"username": "u", "password": "change-me"}})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for HTTPClientConfig
basic_auth
  Value error, password is left at the placeholder 'change-me'; set a real secret ...
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import requests
from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: What people leave in a secret they meant to fill in later.
_PLACEHOLDER = re.compile(
    r"(?:change|replace)[-_ ]?(?:me|this)\b.*|<.*>|\{\{.*\}\}|x{3,}|\*{3,}|\.{3}|your[-_ ].*"
    r"|todo|tbd|fixme|placeholder|secret|password|passwd|token|credentials",
    re.IGNORECASE,
)


def is_placeholder(value: str) -> bool:
    """Whether a secret is a stand-in left from an example rather than a real one.

    >>> [is_placeholder(v) for v in ("change-me", "CHANGEME", "<token>", "xxxx", "TODO", "password")]
    [True, True, True, True, True, True]
    >>> is_placeholder("3f9a1c7e-change-me-not"), is_placeholder("k")
    (False, False)
    """
    return _PLACEHOLDER.fullmatch(value.strip()) is not None


def check_secret(value: str, key: str, advice: str = "set a real secret") -> str:
    """``value`` if it is a usable secret; ValueError naming ``key`` if empty or a placeholder.

    >>> check_secret("", "secret", "set a long random string")
    Traceback (most recent call last):
    ...
    ValueError: secret is empty; set a long random string
    >>> check_secret("changeme", "credentials")
    Traceback (most recent call last):
    ...
    ValueError: credentials is left at the placeholder 'changeme'; set a real secret
    """
    if not value.strip():
        raise ValueError(f"{key} is empty; {advice}")
    if is_placeholder(value):
        raise ValueError(f"{key} is left at the placeholder {value.strip()!r}; {advice}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def http_url(value: str, key: str, *, quote: bool = True) -> str:
    """``value`` if it is an http(s) URL without credentials in it; ValueError naming ``key`` if not.

    ``quote=False`` keeps a URL that is itself a secret (Slack's) out of the message.

    >>> http_url("http://u:pw@127.0.0.1:9093", "url")
    Traceback (most recent call last):
    ...
    ValueError: url holds credentials; move them to basic_auth, which keeps them secret
    >>> http_url("localhost:9093", "url")
    Traceback (most recent call last):
    ...
    ValueError: url 'localhost:9093' is not an http(s) URL; use e.g. https://host:port/path
    """
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is not None and url.userinfo:
        # Never quoted: the URL holds a password, which would be logged and put into links.
        raise ValueError(f"{key} holds credentials; move them to basic_auth, which keeps them secret")
    shown = f" {value!r}" if quote else ""
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{key}{shown} is not an http(s) URL; use e.g. https://host:port/path")
    return value


def _relative_to_config(path: Path | None, info: ValidationInfo) -> Path | None:
    """A relative path as seen from the configuration file (its directory is in the context)."""
    directory = (info.context or {}).get("directory")
    if path is None or path.is_absolute() or directory is None:
        return path
    return Path(directory) / path


def _one_secret(value: SecretStr | None, file: Path | None, key: str) -> SecretStr:
    """The secret given inline as ``key`` or in ``key_file`` (exactly one), checked."""
    if value is not None and file is not None:
        raise ValueError(f"give {key} or {key}_file, not both")
    if file is None:
        if value is None:
            raise ValueError(f"needs {key} or {key}_file")
        return SecretStr(check_secret(value.get_secret_value(), key))
    try:
        # Surrounding whitespace (a file's final newline) is not part of the secret, as in Prometheus.
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(
            f"{key}_file: cannot read {file} ({reason}); give a readable file holding the {key}"
        ) from None
    return SecretStr(check_secret(text, f"{key}_file {file}", f"write the real {key} into it"))


class BasicAuth(_Strict):
    """HTTP basic authentication: ``username`` and ``password`` or ``password_file``.

    >>> auth = BasicAuth(username="detector", password="s3cret-pw")
    >>> auth
    BasicAuth(username='detector', password=SecretStr('**********'), password_file=None)
    >>> auth.header()
    'Basic ZGV0ZWN0b3I6czNjcmV0LXB3'
    """

    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    _password: SecretStr = PrivateAttr(SecretStr(""))

    _file = field_validator("password_file")(_relative_to_config)

    @model_validator(mode="after")
    def _load(self) -> BasicAuth:
        self._password = _one_secret(self.password, self.password_file, "password")
        return self

    def header(self) -> str:
        """The ``Authorization`` header value (holds the password: never log it)."""
        pair = f"{self.username}:{self._password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


class Authorization(_Strict):
    """An ``Authorization: <type> <credentials>`` header; ``type`` is ``Bearer`` unless set.

    >>> Authorization(type="Token", credentials="tok-3f9a1c7e").header()
    'Token tok-3f9a1c7e'
    >>> Authorization(type="Basic", credentials="dTpw")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Authorization
    type
      Value error, type 'Basic' is not allowed here; use basic_auth: {username, password} ...
    """

    type: str = "Bearer"
    credentials: SecretStr | None = None
    credentials_file: Path | None = None
    _credentials: SecretStr = PrivateAttr(SecretStr(""))

    _file = field_validator("credentials_file")(_relative_to_config)

    @field_validator("type")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.lower() == "basic":
            raise ValueError(f"type {value!r} is not allowed here; use basic_auth: {{username, password}}")
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
            raise ValueError(f"type {value!r} is not an HTTP authentication scheme; use e.g. Bearer")
        return value

    @model_validator(mode="after")
    def _load(self) -> Authorization:
        self._credentials = _one_secret(self.credentials, self.credentials_file, "credentials")
        return self

    def header(self) -> str:
        """The ``Authorization`` header value (holds the credentials: never log it)."""
        return f"{self.type} {self._credentials.get_secret_value()}"


class TLSConfig(_Strict):
    """Whom to trust (``ca_file``, ``server_name``) and who we are (``cert_file``, ``key_file``).

    Without ``ca_file`` the server is verified against the usual public CAs;
    ``insecure_skip_verify`` turns verification off (for tests only).

    >>> TLSConfig(cert_file="client.pem")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for TLSConfig
      Value error, cert_file and key_file go together: give both (a client certificate and its key) ...
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    _files = field_validator("ca_file", "cert_file", "key_file")(_relative_to_config)

    @model_validator(mode="after")
    def _loads(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together: give both (a client certificate and its key) or neither"
            )
        self.ssl_context()  # Read the files now, so a bad one stops the start, not the first alert.
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """A client context as configured; ValueError naming the key of a file it cannot use."""
        if self.ca_file is None:
            context = httpx.create_ssl_context()  # the public CAs, as httpx trusts by default
        else:
            _readable(self.ca_file, "ca_file")
            try:
                context = ssl.create_default_context(cafile=str(self.ca_file))
            except ssl.SSLError as error:
                raise ValueError(
                    f"ca_file: {self.ca_file} holds no usable PEM certificate ({error.reason or error})"
                ) from None
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None and self.key_file is not None:
            _readable(self.cert_file, "cert_file")
            _readable(self.key_file, "key_file")
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except ssl.SSLError as error:
                raise ValueError(
                    f"cert_file {self.cert_file}, key_file {self.key_file}: cannot use them "
                    f"({error.reason or error}); give a PEM certificate and the unencrypted key made for it"
                ) from None
        return context


def _readable(path: Path, key: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise ValueError(f"{key}: cannot read {path} ({error.strerror}); give a readable PEM file") from None


class HTTPClientConfig(BaseModel):
    """Prometheus's ``http_config``: ``basic_auth`` or ``authorization``, and ``tls_config``.

    A configuration section that calls out over HTTP inherits these keys.

    >>> HTTPClientConfig.model_validate({"basic_auth": {"username": "u", "password": "p4ss-w0rd"},
    ...                                  "authorization": {"credentials": "tok-3f9a1c7e"}})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for HTTPClientConfig
      Value error, basic_auth and authorization are both set; use one of them, as in Prometheus ...
    """

    model_config = ConfigDict(extra="forbid")

    basic_auth: BasicAuth | None = None
    authorization: Authorization | None = None
    tls_config: TLSConfig | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> HTTPClientConfig:
        if self.basic_auth is not None and self.authorization is not None:
            raise ValueError("basic_auth and authorization are both set; use one of them, as in Prometheus")
        return self


def httpx_arguments(config: HTTPClientConfig) -> dict[str, Any]:
    """The ``httpx.Client`` arguments for ``config``: ``headers``, ``verify``, for ``server_name`` a hook.

    The ``Authorization`` header holds the secret; httpx shows it as ``[secure]``.

    >>> sorted(httpx_arguments(HTTPClientConfig()).items())
    [('headers', {}), ('verify', True)]
    """
    scheme = config.basic_auth or config.authorization
    headers = {} if scheme is None else {"Authorization": scheme.header()}
    arguments: dict[str, Any] = {"headers": headers, "verify": True}
    tls = config.tls_config
    if tls is not None:
        arguments["verify"] = tls.ssl_context()
        if tls.server_name:
            arguments["event_hooks"] = {"request": [_server_name(tls.server_name)]}
    return arguments


def _server_name(name: str) -> Any:
    def hook(request: httpx.Request) -> None:
        # httpcore sends this name in the TLS handshake (SNI) and checks the certificate against it.
        request.extensions["sni_hostname"] = name

    return hook


def http_client(
    config: HTTPClientConfig, *, headers: dict[str, str] | None = None, **options: Any
) -> httpx.Client:
    """An ``httpx.Client`` sending ``config``'s credentials and verifying TLS as it says.

    ``headers`` are sent too (the credentials win); ``options`` go to the client
    (``timeout``, ``transport`` …).

    >>> client = http_client(HTTPClientConfig(), headers={"User-Agent": "me"}, timeout=5)
    >>> client.headers["User-Agent"], client.timeout.read
    ('me', 5)
    """
    arguments = httpx_arguments(config)
    merged = {**(headers or {}), **arguments.pop("headers")}
    return httpx.Client(headers=merged, **arguments, **options)


def requests_session(
    config: HTTPClientConfig, *, headers: dict[str, str] | None = None, retries: Retry | int = 0
) -> requests.Session:
    """A ``requests.Session`` sending ``config``'s credentials and verifying TLS as it says.

    ``headers`` are sent too (the credentials win).  ``retries`` go to the
    session's adapter, mounted for ``http://`` and ``https://``; a client that
    mounts its own adapter on a URL should mount this one back over it, or
    ``server_name`` is lost.

    >>> config = HTTPClientConfig.model_validate(
    ...     {"basic_auth": {"username": "u", "password": "p4ss-w0rd"},
    ...      "tls_config": {"insecure_skip_verify": True, "server_name": "prometheus.internal"}})
    >>> session = requests_session(config, headers={"User-Agent": "me"})
    >>> request = session.prepare_request(requests.Request("GET", "https://127.0.0.1:9090/"))
    >>> request.headers["Authorization"], request.headers["User-Agent"], session.verify
    ('Basic dTpwNHNzLXcwcmQ=', 'me', False)
    """
    session = _Session()
    session.headers.update(headers or {})
    scheme = config.basic_auth or config.authorization
    if scheme is not None:
        session.auth = _SchemeAuth(scheme)
    tls = config.tls_config or TLSConfig()
    if tls.insecure_skip_verify:
        session.verify = False
    elif tls.ca_file is not None:
        session.verify = str(tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        session.cert = (str(tls.cert_file), str(tls.key_file))
    adapter = _ServerNameAdapter(tls.server_name, max_retries=retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class _Session(requests.Session):
    """A session whose own ``verify`` (``ca_file``, ``insecure_skip_verify``) is not overridden.

    requests lets ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` replace a
    session's ``verify`` for every request that does not pass one
    (psf/requests#3829); they still apply when ``tls_config`` names no CA.
    """

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if verify is None and self.verify is not True:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


class _SchemeAuth(requests.auth.AuthBase):
    """``Authorization`` from ``basic_auth`` or ``authorization``.

    As the session's ``auth`` (not one of its headers) it is also what a
    ``~/.netrc`` entry cannot replace, and requests drops it on a redirect to
    another host.
    """

    def __init__(self, scheme: BasicAuth | Authorization) -> None:
        self._scheme = scheme

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._scheme.header()
        return request


class _ServerNameAdapter(HTTPAdapter):
    """Sends ``server_name`` in the TLS handshake (SNI) and checks the certificate against it.

    requests has no setting for it; urllib3 takes it as a connection pool
    argument, which this adapter adds to every HTTPS pool, direct or through a
    proxy.
    """

    def __init__(self, server_name: str | None, **options: Any) -> None:
        self.server_name = server_name
        super().__init__(**options)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        if self.server_name and host["scheme"] == "https":
            # urllib3 passes it to ssl.wrap_socket, so OpenSSL checks the certificate against it.
            pool["server_hostname"] = self.server_name
        return host, pool


def tls_problem(error: BaseException) -> str | None:
    """What went wrong in the TLS handshake behind ``error``, and what to check; ``None`` if not TLS.

    >>> tls_problem(httpx.ConnectError("[Errno 111] Connection refused")) is None
    True
    """
    cause = next((e for e in _wrapped(error) if isinstance(e, ssl.SSLError)), None)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate was not accepted ({cause.verify_message or cause}); "
            "check tls_config: ca_file must hold the CA that signed it and server_name match a name in it"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}; check tls_config (ca_file, cert_file, key_file) and the URL"
    return None


def _wrapped(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every error behind it: raised from or during, or held as urllib3 holds it.

    urllib3 wraps an ``ssl.SSLError`` met while reading a reply without raising
    it (``SSLError(error)``, then ``MaxRetryError.reason``), so the chain of
    causes alone does not reach it.
    """
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        held = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args[:1])
        pending += [e for e in held if isinstance(e, BaseException)]


def describe_error(error: Exception) -> str:
    """A transport error in one line, saying what to check when it is TLS.

    >>> describe_error(httpx.ConnectError("[Errno 111] Connection refused"))
    'ConnectError: [Errno 111] Connection refused'
    """
    return tls_problem(error) or f"{type(error).__name__}: {error}"


__all__ = [
    "Authorization",
    "BasicAuth",
    "HTTPClientConfig",
    "TLSConfig",
    "check_secret",
    "describe_error",
    "http_client",
    "http_url",
    "httpx_arguments",
    "is_placeholder",
    "requests_session",
    "tls_problem",
]
