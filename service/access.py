"""Who may read and who may change what, decided for every HTTP request before any route runs.

Reading is ``GET`` and ``HEAD`` (``/metrics``, ``/-/healthy``, ``/-/ready``,
the API's listings, the pages); every other method changes state
(``POST /api/v1/write``, silences, feedback) and is a write.

* With ``basic_auth_users`` in the web config, every request needs a
  configured user's name and password, reads too (as in Prometheus).  A
  request without them, or with wrong ones, gets 401 with
  ``WWW-Authenticate: Basic realm="anomaly-detector"``.
* With client certificates required (``client_auth_type:
  RequireAndVerifyClientCert``) every client has already proved itself to the
  TLS layer, so it may write.
* Otherwise reads answer anyone, and writes answer only when the service
  listens on a loopback address, unless ``unauthenticated_writes`` says the
  network is protected in another way.  Elsewhere they get 403 saying how to
  configure credentials.

Every allowed request carries who made it (``request.state.actor``, read with
:func:`actor`): the user name, else ``anonymous@<client address>``.  Silences
and feedback record it.

User names are compared in constant time and a name that is not configured
still costs a bcrypt check, so timing tells nothing about which names exist.
bcrypt is slow by design (a third of a second at cost 12), so a verified
name and password is remembered (as a salted digest, never the password) and
the next request with them costs a hash lookup; checks run one at a time on a
worker thread, so a flood of wrong passwords takes one core, not the service.

>>> import asyncio
>>> access = Access(host="0.0.0.0")
>>> asyncio.run(access.decide("GET", None, "10.1.2.3"))
'anonymous@10.1.2.3'
>>> asyncio.run(access.decide("POST", None, "10.1.2.3")).status
403
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import bcrypt
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from detector.config import ConfigError
from service.web_config import EXAMPLE_HASH, WebConfig

REALM = "anomaly-detector"
READ_METHODS = frozenset({"GET", "HEAD"})
#: Values of the ``reason`` label of ``anomaly_detector_http_auth_failures_total``.
REASONS = ("missing_credentials", "wrong_credentials", "writes_refused")
#: Verified (user, password) digests remembered; a new one beyond this forgets the oldest.
_REMEMBERED = 256


@dataclass(frozen=True)
class Refusal:
    """A request that is not served: its status, the one-line answer and the metric's reason."""

    status: int
    message: str
    reason: str

    def response(self) -> PlainTextResponse:
        headers = {"WWW-Authenticate": f'Basic realm="{REALM}"'} if self.status == 401 else None
        return PlainTextResponse(f"{self.message}\n", status_code=self.status, headers=headers)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("")
    (True, True, False, False)
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes (user name -> hash)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = [(name.encode(), hashed.encode()) for name, hashed in users.items()]
        # An unknown name is checked against this, at the highest configured cost, to take as long.
        cost = max(int(hashed[4:6]) for _, hashed in self._users)
        self._unknown = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=cost))
        self._salt = os.urandom(16)
        self._verified: dict[bytes, None] = {}
        self._limiter: anyio.CapacityLimiter | None = None

    def _hash_of(self, user: bytes) -> bytes | None:
        found = None
        for name, hashed in self._users:  # every name compared, whichever matches
            if hmac.compare_digest(name, user):
                found = hashed
        return found

    def verify(self, user: bytes, password: bytes) -> bool:
        """Whether the password is the user's (slow: bcrypt)."""
        hashed = self._hash_of(user)
        try:
            matches = bcrypt.checkpw(password, hashed or self._unknown)
        except ValueError:  # longer than bcrypt's 72 bytes: no hash can match it
            matches = False
        return matches and hashed is not None

    async def user(self, authorization: str | None) -> str | Refusal:
        """The user an ``Authorization`` header proves, or why it does not."""
        if not authorization:
            return Refusal(401, "authentication required: give a user name and password", REASONS[0])
        refused = Refusal(401, "wrong user name or password", REASONS[1])
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return refused
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return refused
        if not colon:
            return refused
        digest = hashlib.blake2b(user + b"\0" + password, key=self._salt).digest()
        if digest not in self._verified:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(1)
            if not await anyio.to_thread.run_sync(self.verify, user, password, limiter=self._limiter):
                return refused
            if len(self._verified) >= _REMEMBERED:
                del self._verified[next(iter(self._verified))]
            self._verified[digest] = None
        return user.decode()


class Access:
    """The access rule of one running service: its web config, its listen address and the opt-out.

    ``host`` is the address the service listens on; only a loopback one lets
    anonymous writes through (unless ``unauthenticated_writes``).
    """

    def __init__(
        self, web: WebConfig | None = None, host: str = "127.0.0.1", unauthenticated_writes: bool = False
    ) -> None:
        self.web = web if web is not None else WebConfig()
        self.host = host
        self.unauthenticated_writes = unauthenticated_writes
        users = {name: hashed.get_secret_value() for name, hashed in self.web.basic_auth_users.items()}
        self.loopback = is_loopback(host)
        self.example_users = sorted(name for name, hashed in users.items() if hashed == EXAMPLE_HASH)
        if self.example_users and not self.loopback:
            raise ConfigError(
                f"basic_auth_users: {', '.join(self.example_users)} has the published password of "
                f"examples/web-config.yml; make your own hash before listening on {host}"
            )
        self.basic_auth = BasicAuth(users) if users else None
        tls = self.web.tls_server_config
        self.client_certificates = tls is not None and tls.requires_client_certificate
        self.writes_open = (
            self.client_certificates or self.loopback or unauthenticated_writes or self.basic_auth is not None
        )
        self._refusal = Refusal(
            403,
            f"writes are refused: this service listens on {host} without credentials; set basic_auth_users "
            "in a web config file (anomaly-detector run --web.config.file FILE, or web_config_file: in "
            "the service configuration), or start it with --web.unauthenticated-writes if the network "
            "is protected otherwise",
            REASONS[2],
        )

    def warnings(self) -> list[str]:
        """What to warn about at start, one line each."""
        lines = []
        if self.example_users:
            lines.append(
                f"basic_auth_users: {', '.join(self.example_users)} has the published example password; "
                "fine on loopback, refused anywhere else"
            )
        if self.basic_auth is not None and self.unauthenticated_writes:
            lines.append("unauthenticated_writes is ignored: with basic_auth_users every request needs them")
        if not self.loopback and not self.writes_open:
            lines.append(
                f"listening on {self.host} without credentials: remote_write, silences and feedback are "
                "refused (403); set basic_auth_users in --web.config.file, or --web.unauthenticated-writes"
            )
        elif not self.loopback and self.basic_auth is None and not self.client_certificates:
            lines.append(
                f"listening on {self.host} with --web.unauthenticated-writes: anyone who can reach it may "
                "remote-write, silence alerts and give feedback"
            )
        if not self.loopback and self.basic_auth is not None and self.web.tls_server_config is None:
            lines.append(
                "basic auth without TLS: passwords cross the network in clear text; add tls_server_config"
            )
        return lines

    async def decide(self, method: str, authorization: str | None, client: str | None) -> str | Refusal:
        """Who is asking (the actor), or why the request is refused."""
        if self.basic_auth is not None:
            return await self.basic_auth.user(authorization)
        if method not in READ_METHODS and not self.writes_open:
            return self._refusal
        return f"{'client-certificate' if self.client_certificates else 'anonymous'}@{client or 'unknown'}"


class AccessControl:
    """ASGI middleware applying an :class:`Access` to every HTTP request; ``refused(reason)`` counts."""

    def __init__(self, app: ASGIApp, access: Access, refused: Callable[[str], None]) -> None:
        self.app = app
        self.access = access
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        verdict = await self.access.decide(
            scope["method"], Headers(scope=scope).get("authorization"), client[0] if client else None
        )
        if isinstance(verdict, Refusal):
            self.refused(verdict.reason)
            await verdict.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["actor"] = verdict
        await self.app(scope, receive, send)


def actor(request: Request) -> str:
    """Who made this request, as :class:`AccessControl` found (for ``Depends``)."""
    return str(getattr(request.state, "actor", "anonymous"))
