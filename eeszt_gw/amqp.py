"""Reaching RabbitMQ: the one place where a broker URL becomes pika connection parameters.

Every component that connects to RabbitMQ (the publishers and the reply listener, the workers
and their dramatiq broker, the card bridge, ``eeszt-gw status|dlq|audit``) builds its
parameters with :func:`broker_parameters` and opens blocking connections with
:func:`open_connection`, so TLS is set up once and the same way everywhere:

- ``amqp://`` is plain TCP. TLS files given with it are refused: the operator meant TLS, and
  the password would otherwise travel in the clear.
- ``amqps://`` is TLS 1.2 or newer, and the broker's certificate is **always** verified
  (``CERT_REQUIRED``, and the hostname check against the URL's host), against
  :attr:`BrokerTLS.ca_file` or else the system's trusted CAs. There is no switch to turn the
  verification off, and an ``ssl_options`` query in the URL (pika's own way) is refused.
  :attr:`BrokerTLS.cert_file` and :attr:`BrokerTLS.key_file` present a client certificate to
  a broker that requires one (``ssl_options.fail_if_no_peer_cert = true``).

Errors::

    BrokerConfigError (ValueError)      the URL or a TLS file cannot be used; raised by
                                        broker_parameters before any network I/O
    BrokerTLSError                      the TLS handshake failed; names the broker's host and
      (pika AMQPConnectionError)        port and says whose certificate was refused. Code that
                                        retries connection errors keeps doing so.

Certificate files are read when :func:`broker_parameters` is called; nothing happens at
import. The messages never repeat the URL's password nor a file's content.
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pika
import pika.exceptions

__all__ = [
    "BrokerConfigError",
    "BrokerTLS",
    "BrokerTLSError",
    "broker_parameters",
    "open_connection",
    "safe_url",
    "tls_failure",
]

#: ``[SSL: REASON] text`` as pika puts an ssl error into the text of its own exceptions
_SSL_IN_TEXT: Final = re.compile(r"\[SSL: ([A-Z0-9_]+)\]\s*([^(\]'\"\\]*)")
#: The reason given when the broker closed the TLS connection without a word. With TLS 1.3 a
#: broker that refuses the client's certificate sends its alert after the client's handshake
#: is done; if the client is writing the AMQP header at that moment, it sees only the close.
TLS_EOF: Final = "TLS_EOF"
_EOF_TEXT: Final = "EOF occurred in violation of protocol"


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class BrokerConfigError(ValueError):
    """The broker URL or the broker TLS files cannot be used (raised before connecting)."""


class BrokerTLSError(pika.exceptions.AMQPConnectionError):
    """The TLS handshake with the broker failed; ``str()`` says where and why in one line.

    ``host``/``port`` name the broker, ``reason`` is OpenSSL's reason code (for example
    ``CERTIFICATE_VERIFY_FAILED`` or ``TLSV13_ALERT_CERTIFICATE_REQUIRED``).
    """

    def __init__(self, message: str, *, host: str, port: int, reason: str) -> None:
        super().__init__(message)
        self.message, self.host, self.port, self.reason = message, host, port, reason

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.message!r})"


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerTLS:
    """TLS files for an ``amqps://`` broker URL; every field is optional.

    ``ca_file``: the CA (PEM) that signed the broker's certificate; the system's CAs when
    None. ``cert_file``/``key_file``: this client's certificate and key (PEM), for brokers
    that require client certificates; the key may be inside ``cert_file``.

    Raises:
        BrokerConfigError: a key without a certificate.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise BrokerConfigError("a broker client key (--broker-key) needs its certificate "
                                    "(--broker-cert)")

    @classmethod
    def from_paths(cls, ca_file: str | Path | None = None, cert_file: str | Path | None = None,
                   key_file: str | Path | None = None) -> BrokerTLS | None:
        """None when no file is given (so a plain ``amqp://`` URL stays valid)."""
        if not (ca_file or cert_file or key_file):
            return None
        return cls(ca_file=Path(ca_file) if ca_file else None,
                   cert_file=Path(cert_file) if cert_file else None,
                   key_file=Path(key_file) if key_file else None)


def _ssl_reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc.__class__.__name__)


def client_ssl_context(tls: BrokerTLS | None) -> ssl.SSLContext:
    """A client context that verifies the broker (CERT_REQUIRED, hostname check, TLS >= 1.2).

    Raises:
        BrokerConfigError: the CA file, the certificate or the key cannot be loaded.
    """
    ca = tls.ca_file if tls else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(ca) if ca is not None else None)
    except OSError as exc:  # ssl.SSLError is an OSError too
        what = exc.strerror if not isinstance(exc, ssl.SSLError) else _ssl_reason(exc)
        raise BrokerConfigError(f"broker CA file {ca}: cannot load it ({what})") from None
    # create_default_context already does this; stated here so that no edit can loosen it.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.cert_file is not None:
        try:
            ctx.load_cert_chain(str(tls.cert_file),
                                str(tls.key_file) if tls.key_file is not None else None)
        except OSError as exc:
            what = exc.strerror if not isinstance(exc, ssl.SSLError) else _ssl_reason(exc)
            key = f" / key {tls.key_file}" if tls.key_file is not None else ""
            raise BrokerConfigError(f"broker client certificate {tls.cert_file}{key}: cannot "
                                    f"load it ({what}; does the key match the certificate?)"
                                    ) from None
    return ctx


def broker_parameters(url: str, tls: BrokerTLS | None = None) -> pika.URLParameters:
    """pika parameters for ``url``: plain for ``amqp://``, verified TLS for ``amqps://``.

    Callers set their own timeouts and heartbeat on the result. Called once per component
    (or per connect, by the publishers).

    Raises:
        BrokerConfigError: not an AMQP URL (the message does not repeat it), an
            ``ssl_options`` query, TLS files with ``amqp://``, or a TLS file that cannot be
            loaded.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
    except (ValueError, TypeError, AttributeError):
        raise BrokerConfigError("the broker URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise BrokerConfigError("the broker URL must start with amqp:// or amqps://")
    if "ssl_options" in query:
        raise BrokerConfigError("the broker URL must not carry ssl_options: use amqps:// with "
                                "--broker-ca, --broker-cert and --broker-key")
    if scheme == "amqp" and tls is not None:
        raise BrokerConfigError("broker TLS files are set but the broker URL is amqp:// "
                                "(plain TCP): use amqps://")
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise BrokerConfigError(
            f"the broker URL is not a valid AMQP URL ({exc.__class__.__name__})") from None
    if scheme == "amqps":
        params.ssl_options = pika.SSLOptions(client_ssl_context(tls), server_hostname=params.host)
    return params


def tls_failure(exc: BaseException) -> tuple[str, str] | None:
    """``(reason, detail)`` of the TLS error inside a failed connect, or None if there is none.

    pika either raises the ``ssl`` error itself (the broker's certificate was refused here) or
    wraps it, sometimes only as text, into its own errors (the broker refused ours, which
    TLS 1.3 reports after the handshake); both are looked for, with causes and arguments.
    """
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return _ssl_reason(item), item.verify_message or str(item)
        if isinstance(item, ssl.SSLEOFError):
            return TLS_EOF, _EOF_TEXT
        if isinstance(item, ssl.SSLError):
            text = str(item.args[1] if len(item.args) > 1 else item)
            match = _SSL_IN_TEXT.search(text)
            return _ssl_reason(item), (match.group(2).strip() if match else "") or text
        if isinstance(item, str):
            match = _SSL_IN_TEXT.search(item)
            if match:
                return match.group(1), match.group(2).strip() or match.group(1)
            if _EOF_TEXT in item:
                return TLS_EOF, _EOF_TEXT
        elif isinstance(item, BaseException):
            stack += [item.__cause__, item.__context__, *item.args,
                      *(getattr(item, "exceptions", None) or ())]
        elif isinstance(item, (list, tuple)):
            stack += list(item)
    return None


def _explain(reason: str, detail: str, host: str) -> str:
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return (f"the broker's certificate is not trusted ({detail}); check that the broker CA "
                f"file (--broker-ca) holds the CA that signed it and that it names {host!r}")
    if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
        return (f"the broker refused this client's certificate ({detail}); it requires a "
                "client certificate it trusts: check --broker-cert and --broker-key")
    if reason == TLS_EOF:
        return (f"the broker closed the TLS connection without saying why ({detail}); a broker "
                "that requires a client certificate does that when it refuses this client's "
                "certificate, or gets none: check --broker-cert and --broker-key")
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNEXPECTED_EOF_WHILE_READING"):
        return f"the port does not speak TLS ({detail}); is it the plain AMQP port?"
    return detail


def open_connection(params: pika.ConnectionParameters) -> pika.BlockingConnection:
    """``pika.BlockingConnection(params)``, with a TLS failure turned into a clear error.

    Raises:
        BrokerTLSError: the TLS handshake failed (message names host, port and the cause).
        pika.exceptions.AMQPError, OSError: any other connect failure, unchanged.
    """
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        found = tls_failure(exc) if params.ssl_options is not None else None
        if found is None:
            raise
        reason, detail = found
        host, port = params.host, params.port
        raise BrokerTLSError(
            f"TLS/certificate problem with the broker at {host}:{port}: "
            f"{_explain(reason, detail, host)}", host=host, port=port, reason=reason) from None
