"""The token manager: one SAML token per identity, cached for its lifetime.

- **One per identity.** An identity is the institution (``institution:H100200``, X.509 login)
  or a sector user (``doctor:O10001``, password or MobilToken login where configured).
- **Refreshed before it expires**: after ``refresh_ratio`` of its lifetime the next caller
  refreshes it; if the refresh fails while the old token still lives, the old one is used.
- **One STS call in flight per identity**: a lock per identity inside the process, and a
  :class:`~workers.token_share.TokenShare` lock across processes.
- **Shared between processes**: a process that logged in publishes the token through the share,
  so the others use it instead of logging in again (a one-time code cannot be used twice, and a
  card login must not prompt twice). See :mod:`workers.token_share` for why that is safe.

Tokens are bearer credentials: they are never logged, and never written to disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

import pyotp
from lxml import etree

from .errors import LoginFailed, ServiceRejected, TokenError

log = logging.getLogger("eeszt_gw.tokens")


class NoLoginRoute(TokenError):
    """No way to log this identity in is configured (no password, no MobilToken secret)."""


class LoginRequired(TokenError):
    """The doctor must log in at a workstation (eSZIG card, or a MobilToken code typed there).

    The worker then starts one login for the doctor and parks the request until it completes.
    """

    def __init__(self, user_id: str, *, route: str) -> None:
        super().__init__(f"{user_id} must log in ({route})")
        self.user_id = user_id
        self.route = route


@dataclass(frozen=True, slots=True)
class Token:
    identity: str
    assertion: etree._Element
    created: datetime
    expires: datetime
    refresh_at: datetime

    def usable(self, now: datetime) -> bool:
        return now < self.expires

    def fresh(self, now: datetime) -> bool:
        return now < self.refresh_at

    def __repr__(self) -> str:  # never show the assertion
        return f"Token({self.identity}, expires={self.expires.isoformat()})"


@dataclass(frozen=True, slots=True)
class Credential:
    """A sector user's configured login route. Secrets stay in this object only."""

    user_id: str
    password: str | None = None
    totp_secret: str | None = None
    workstation: str | None = None
    #: interactive route when no secret is configured: "eszig" (card) or "mobiltoken" (typed code)
    interactive: str = "eszig"

    def __repr__(self) -> str:
        return f"Credential({self.user_id}, password={'***' if self.password else None}, " \
               f"mobiltoken={'***' if self.totp_secret else None})"


def load_credentials(path: Path) -> dict[str, Credential]:
    """Read a users file (``eeszt-gw pki init`` writes one). Raises ValueError naming the entry."""
    data = json.loads(Path(path).read_text())
    creds = {}
    for i, u in enumerate(data.get("users", [])):
        if "user_id" not in u:
            raise ValueError(f"{path}: users[{i}] has no user_id")
        route = u.get("login", "eszig")
        if route not in ("eszig", "mobiltoken"):
            raise ValueError(f"{path}: users[{i}].login must be eszig or mobiltoken, not {route!r}")
        creds[u["user_id"]] = Credential(user_id=u["user_id"], password=u.get("password"),
                                         totp_secret=u.get("totp_secret"),
                                         workstation=u.get("workstation"), interactive=route)
    return creds


class IssuedLike(Protocol):
    assertion: etree._Element
    created: datetime
    expires: datetime


class StsClient(Protocol):
    def issue_token(self, *, method: str, user_id: str | None = None,
                    workstation: str | None = None, password: str | None = None,
                    otp: str | None = None, rid_package: str | None = None) -> IssuedLike: ...


def institution_identity(institution: str) -> str:
    return f"institution:{institution}"


def doctor_identity(user_id: str) -> str:
    return f"doctor:{user_id}"


class TokenManager:
    """Hands out tokens by identity. Thread-safe; one per worker process."""

    def __init__(self, *, sts: StsClient, credentials: dict[str, Credential] | None = None,
                 share=None, refresh_ratio: float = 0.8,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 share_wait_s: float = 10.0, interactive_logins: bool = True) -> None:
        from .token_share import LocalTokenShare

        self.sts = sts
        self.credentials = credentials or {}
        self.share = share or LocalTokenShare()
        self.refresh_ratio = refresh_ratio
        self.clock = clock
        self.share_wait_s = share_wait_s
        self.interactive_logins = interactive_logins
        self._cache: dict[str, Token] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.stats = Counter()  # hits, logins, logins_by_method:*, shared_in, refresh_failed
        self.logins_by_reason: Counter = Counter()
        self.share.subscribe(self._accept_shared)

    # --- public -----------------------------------------------------------------------------
    def get(self, identity: str, *, reason: str = "", expect_shared: bool = False) -> Token:
        """A usable token for ``identity``, logging in when needed.

        Raises NoLoginRoute, LoginFailed, or the ServiceError family when the STS is unreachable
        and no usable token is cached. ``expect_shared``: another process has just logged this
        identity in, so wait for its token to arrive through the share before logging in again.
        """
        now = self.clock()
        token = self._cache.get(identity)
        if token is not None and token.fresh(now):
            self.stats["hits"] += 1
            return token
        if token is not None and token.usable(now) and self._interactive_route(identity):
            # A card login cannot be refreshed without the doctor: use it while it lives.
            self.stats["hits"] += 1
            return token
        with self._lock_for(identity):
            now = self.clock()
            token = self._cache.get(identity)
            if token is not None and token.fresh(now):
                self.stats["hits"] += 1
                return token
            if expect_shared:
                shared = self.share.wait_for(identity, timeout_s=self.share_wait_s, clock=self.clock)
                if shared is not None:
                    self._cache[identity] = shared
                    return shared
            try:
                token = self._obtain(identity, reason)
            except (TokenError, ServiceRejected):
                raise
            except Exception:
                stale = self._cache.get(identity)
                if stale is not None and stale.usable(self.clock()):
                    self.stats["refresh_failed"] += 1
                    log.warning("token refresh for %s failed; using the current token until it "
                                "expires", identity)
                    return stale
                raise
            self._cache[identity] = token
            return token

    def put(self, identity: str, issued: IssuedLike, *, reason: str = "") -> Token:
        """Cache a token obtained outside :meth:`get` (an interactive login) and share it.

        No identity lock: a thread of :meth:`get` may hold it while it waits for a token.
        """
        token = self._token(identity, issued)
        self._cache[identity] = token  # one reference swap
        self.stats["logins"] += 1
        self.logins_by_reason[reason] += 1
        self.share.publish(identity, token)
        return token

    def usable(self, identity: str) -> Token | None:
        """The cached token if it can still be used (even if due for a refresh)."""
        token = self._cache.get(identity)
        return token if token is not None and token.usable(self.clock()) else None

    def invalidate(self, identity: str, token: Token | None = None) -> None:
        """Forget a token the service refused (only if it is still the cached one)."""
        with self._lock_for(identity):
            if token is None or self._cache.get(identity) is token:
                self._cache.pop(identity, None)
                self.share.forget(identity)

    def cached(self, identity: str) -> Token | None:
        return self._cache.get(identity)

    # --- internals --------------------------------------------------------------------------
    def _lock_for(self, identity: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(identity, threading.Lock())

    def _accept_shared(self, identity: str, token: Token) -> None:
        current = self._cache.get(identity)
        if current is None or token.expires > current.expires:
            self._cache[identity] = token
            self.stats["shared_in"] += 1

    def _interactive_route(self, identity: str) -> str | None:
        """The interactive route of a doctor with no secret configured, else None."""
        kind, _, name = identity.partition(":")
        if kind != "doctor" or not self.interactive_logins:
            return None
        cred = self.credentials.get(name)
        if cred is not None and (cred.password or cred.totp_secret):
            return None
        return cred.interactive if cred is not None else "eszig"

    def _obtain(self, identity: str, reason: str) -> Token:
        shared = self.share.lookup(identity)
        if shared is not None and shared.fresh(self.clock()):
            return shared
        route = self._interactive_route(identity)
        if route is not None:
            # The doctor logs in at the workstation; the login coordinator's pending marker,
            # not this lock, makes that happen once across processes.
            raise LoginRequired(identity.partition(":")[2], route=route)
        with self.share.lock(identity, wait_s=self.share_wait_s) as acquired:
            if not acquired:
                # Another process is logging this identity in: its token arrives through the share.
                shared = self.share.wait_for(identity, timeout_s=self.share_wait_s, clock=self.clock)
                if shared is not None:
                    return shared
            shared = self.share.lookup(identity)
            if shared is not None and shared.fresh(self.clock()):
                return shared
            token = self._login(identity)
            self.stats["logins"] += 1
            self.logins_by_reason[reason] += 1
            self.share.publish(identity, token)
            return token

    def _login(self, identity: str) -> Token:
        kind, _, name = identity.partition(":")
        if kind == "institution":
            issued = self.sts.issue_token(method="x509")
            self.stats["logins_by_method:x509"] += 1
        elif kind == "doctor":
            cred = self.credentials.get(name)
            if cred is None or not (cred.password or cred.totp_secret):
                if self.interactive_logins:
                    raise LoginRequired(name, route=cred.interactive if cred else "eszig")
                raise NoLoginRoute(f"no login route is configured for {name}")
            try:
                if cred.password:
                    issued = self.sts.issue_token(method="password", user_id=name,
                                                  workstation=cred.workstation,
                                                  password=cred.password)
                    self.stats["logins_by_method:password"] += 1
                else:
                    issued = self._mobiltoken(cred)
                    self.stats["logins_by_method:mobiltoken"] += 1
            except ServiceRejected as exc:
                raise LoginFailed(f"the STS refused the login of {name}: {exc}",
                                  code=exc.code) from None
        else:
            raise ValueError(f"unknown identity {identity!r}")
        return self._token(identity, issued)

    def _token(self, identity: str, issued: IssuedLike) -> Token:
        lifetime = issued.expires - issued.created
        return Token(identity=identity, assertion=issued.assertion, created=issued.created,
                     expires=issued.expires,
                     refresh_at=issued.created + lifetime * self.refresh_ratio)

    def _mobiltoken(self, cred: Credential) -> IssuedLike:
        totp = pyotp.TOTP(cred.totp_secret)
        try:
            return self.sts.issue_token(method="mobiltoken", user_id=cred.user_id,
                                        workstation=cred.workstation, otp=totp.now())
        except ServiceRejected:
            # A one-time code is accepted once: if this step's code was used, wait for the next.
            time.sleep(totp.interval - time.time() % totp.interval + 0.05)
            return self.sts.issue_token(method="mobiltoken", user_id=cred.user_id,
                                        workstation=cred.workstation, otp=totp.now())
