"""The gateway's error tree. The retry decision reads an error's class, never its message.

::

    GatewayError
    ├── ServiceError                 a call to an EESZT service (STS included) did not succeed
    │   ├── ServiceUnavailable       transient: 5xx, outage, refused or reset before sending,
    │   │   │                        connect timeout. Nothing landed; retry with backoff.
    │   │   └── AmbiguousOutcome     the request was sent, the answer was lost (read timeout,
    │   │                            reset after sending): ask by idempotency key before resending
    │   └── ServiceRejected          a client fault (validation, permission, business rule,
    │       │                        signature): never retried. Carries code, field and reason.
    │       └── TokenRejected        the SAML token was refused or expired: refresh once, retry
    └── TokenError                   no token could be had for an identity
        └── LoginFailed              the STS refused the credentials (AUTH_FAILED)

Library exceptions (urllib3, lxml) are translated into these at one place each:
:mod:`workers.client.transport` and :mod:`workers.client.soap`.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ServiceError(GatewayError):
    def __init__(self, message: str, *, service: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.code = code


class ServiceUnavailable(ServiceError):
    """Transient: the request did not land. Safe to resend after a backoff."""


class AmbiguousOutcome(ServiceUnavailable):
    """The request may have landed. Query by idempotency key before resending."""


class ServiceRejected(ServiceError):
    """Permanent: the service refused the request itself. Never retried."""

    def __init__(self, message: str, *, service: str = "", code: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, service=service, code=code)
        self.field = field


class TokenRejected(ServiceRejected):
    """The SAML token was missing, invalid or expired: refresh it once and retry."""


class TokenError(GatewayError):
    """No token could be obtained for an identity."""


class LoginFailed(TokenError):
    """The STS refused the credentials (wrong password or one-time code, unknown user)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
