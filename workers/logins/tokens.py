"""The token manager: one SAML token per identity, cached for its lifetime.

- **One per identity.** An identity is the institution (``institution:H100200``, X.509 login)
  or a doctor (``doctor:O10001``). The gateway holds no doctor's secret: a doctor logs in only
  at the workstation, through its card bridge (eSZIG card, or a MobilToken code typed there),
  which :class:`LoginRequired` hands to the login coordinator (:mod:`workers.logins.coordinator`).
- **Refreshed before it expires**: after ``refresh_ratio`` of its lifetime the next caller
  refreshes it; if the refresh fails while the old token still lives, the old one is used.
  A doctor's token cannot be refreshed without the doctor: it is used while it lives.
- **One STS call in flight per identity**: a lock per identity inside the process, and a
  :class:`~workers.logins.token_share.TokenShare` lock across processes.
- **Shared between processes**: a process that logged in publishes the token through the share,
  so the others use it instead of logging in again (a doctor's login must not prompt twice).
  See :mod:`workers.logins.token_share` for why that is safe.

Tokens are bearer credentials: they are never logged, and never written to disk.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Protocol

from lxml import etree

from ..errors import ServiceRejected, TokenError
from .token_share import LocalTokenShare
from .token_type import Token

log = logging.getLogger("eeszt_gw.tokens")


class NoLoginRoute(TokenError):
    """This identity cannot be logged in here (a doctor, and interactive logins are off)."""


class LoginRequired(TokenError):
    """The doctor must log in at the workstation (eSZIG card, or a MobilToken code typed there).

    The worker then starts one login for the doctor and parks the request until it completes.
    """

    def __init__(self, user_id: str, *, route: str = "card bridge") -> None:
        super().__init__(f"{user_id} must log in at the workstation ({route})")
        self.user_id = user_id
        self.route = route


class IssuedLike(Protocol):
    assertion: etree._Element
    created: datetime
    expires: datetime


class StsClient(Protocol):
    def issue_token(self, *, method: str, **kwargs) -> IssuedLike: ...


def institution_identity(institution: str) -> str:
    return f"institution:{institution}"


def doctor_identity(user_id: str) -> str:
    return f"doctor:{user_id}"


class TokenManager:
    """Hands out tokens by identity. Thread-safe; one per worker process."""

    def __init__(self, *, sts: StsClient, share=None, refresh_ratio: float = 0.8,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 share_wait_s: float = 10.0, interactive_logins: bool = True) -> None:
        self.sts = sts
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

        Raises LoginRequired (a doctor without a token: the login coordinator takes over),
        NoLoginRoute, LoginFailed, or the ServiceError family when the STS is unreachable
        and no usable token is cached. ``expect_shared``: another process has just logged this
        identity in, so wait for its token to arrive through the share before logging in again.
        """
        now = self.clock()
        token = self._cache.get(identity)
        if token is not None and token.fresh(now):
            self.stats["hits"] += 1
            return token
        if token is not None and token.usable(now) and self._is_doctor(identity):
            # A doctor's login cannot be refreshed without the doctor: use it while it lives.
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

    @staticmethod
    def _is_doctor(identity: str) -> bool:
        return identity.partition(":")[0] == "doctor"

    def _obtain(self, identity: str, reason: str) -> Token:
        shared = self.share.lookup(identity)
        if shared is not None and shared.fresh(self.clock()):
            return shared
        kind, _, name = identity.partition(":")
        if kind == "doctor":
            if not self.interactive_logins:
                raise NoLoginRoute(f"{name} can log in only at a workstation's card bridge, and "
                                   "this worker does not run interactive logins (set "
                                   "interactive_logins and the challenge key)")
            # The doctor logs in at the workstation; the login coordinator's pending marker,
            # not this lock, makes that happen once across processes.
            raise LoginRequired(name)
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
        if kind != "institution":
            raise ValueError(f"no login of {identity!r} here: doctors log in at the workstation")
        issued = self.sts.issue_token(method="x509")
        self.stats["logins_by_method:x509"] += 1
        return self._token(identity, issued)

    def _token(self, identity: str, issued: IssuedLike) -> Token:
        lifetime = issued.expires - issued.created
        return Token(identity=identity, assertion=issued.assertion, created=issued.created,
                     expires=issued.expires,
                     refresh_at=issued.created + lifetime * self.refresh_ratio)
