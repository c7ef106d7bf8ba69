"""Reaching RabbitMQ: the one place where broker URLs become pika connection parameters.

Every component that connects to RabbitMQ (the publishers and the reply listener, the workers
and their dramatiq broker, the card bridge, ``eeszt-gw status|dlq|audit``) builds its
parameters with :func:`broker_addresses` (:func:`broker_parameters` for one URL) and opens
blocking connections with :func:`open_connection`, so TLS and failover are set up once and the
same way everywhere:

- The broker setting holds one URL or several, comma-separated (``amqp://a,amqp://b``: the
  nodes of one cluster, same user and vhost, all ``amqp://`` or all ``amqps://``). A connect
  tries them in turn, starting after the one that answered last time in this process (so
  clients spread over the nodes after a failover), each bounded by the caller's socket and
  stack timeouts; a dead node costs one refused or timed-out attempt, never a hang.

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
    BrokerUnreachable                   no address of a list answered; names each one tried
      (pika AMQPConnectionError)        (password masked) with its error.

Certificate files are read when :func:`broker_parameters` is called; nothing happens at
import. The messages never repeat the URL's password nor a file's content.
"""

from __future__ import annotations

import logging
import re
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

__all__ = ["BROKER_CONNECTION_LOST", "BrokerConfigError", "BrokerTLS", "BrokerTLSError",
           "BrokerUnreachable", "CONNECTION_ERRORS", "broker_addresses", "broker_parameters", "in_order", "open_connection", "safe_url",
           "split_urls", "tls_failure"]

#: pika's errors that mean "this connection or channel is gone; a new one may work"
#: (StreamLostError is an AMQPConnectionError)
BROKER_CONNECTION_LOST: Final = (pika.exceptions.AMQPConnectionError,
                                 pika.exceptions.ConnectionWrongStateError,
                                 pika.exceptions.ChannelWrongStateError)
#: the same, and the socket's own errors
CONNECTION_ERRORS: Final = (*BROKER_CONNECTION_LOST, OSError)

#: ``[SSL: REASON] text`` as pika puts an ssl error into the text of its own exceptions
_SSL_IN_TEXT: Final = re.compile(r"\[SSL: ([A-Z0-9_]+)\]\s*([^(\]'\"\\]*)")
#: The reason given when the broker closed the TLS connection without a word. With TLS 1.3 a
#: broker that refuses the client's certificate sends its alert after the client's handshake
#: is done; if the client is writing the AMQP header at that moment, it sees only the close.
TLS_EOF: Final = "TLS_EOF"
_EOF_TEXT: Final = "EOF occurred in violation of protocol"
#: Where a broker setting is cut into URLs: at a comma that starts the next URL's scheme, so
#: that a comma inside a password (which may be written raw) never splits it.
_URL_SEPARATOR: Final = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")

log = logging.getLogger("eeszt_gw.amqp")


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """The broker URLs of ``urls``: one string of comma-separated URLs, or several strings
    (each of which may hold commas too). Blanks and stray outer commas are dropped."""
    items = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    found: list[str] = []
    for item in items:
        found += [u for u in _URL_SEPARATOR.split(item.strip(" \t\r\n,")) if u]
    return found


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages; each URL of
    a comma-separated list is masked."""
    urls = split_urls(url) if "," in url else [url]
    if len(urls) > 1:
        return ",".join(safe_url(u) for u in urls)
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


class BrokerUnreachable(pika.exceptions.AMQPConnectionError):
    """No address of a list answered. ``str()`` names every address tried, in the order tried
    (passwords masked), each with its error; ``failures`` holds ``(address, error)`` pairs."""

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = list(failures)
        self.addresses = [addr for addr, _ in self.failures]
        tried = "; ".join(f"{addr} ({describe_error(exc)})" for addr, exc in self.failures)
        self.message = f"no broker answered at {tried}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def describe_error(exc: BaseException) -> str:
    """One line for a connect error; pika's ``str()`` is often empty, its args say why."""
    detail = str(exc) or ", ".join(str(a) or repr(a) for a in exc.args)
    detail = " ".join(detail.split())
    return f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__


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


def _shown(url: str) -> str:
    """`` (url)`` masked, or nothing for a URL too malformed to tell where its password ends."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return ""
    rest = url.split("://", 1)[-1][len(parts.netloc):]
    if parts.scheme.lower() not in ("amqp", "amqps") or not parts.netloc or "@" in rest:
        return ""
    return f" ({safe_url(url)})"


def broker_addresses(urls: str | Sequence[str], tls: BrokerTLS | None = None,
                     **options: Any) -> list[pika.URLParameters]:
    """pika parameters for each URL of ``urls`` (see :func:`split_urls`), in their order, each
    checked as by :func:`broker_parameters`; ``options`` (``heartbeat=60``,
    ``socket_timeout=5``...) are set on every one. :func:`open_connection` takes the list.

    Raises:
        BrokerConfigError: no URL, a URL :func:`broker_parameters` refuses (named by its
            position, password masked), ``amqp://`` mixed with ``amqps://``, or URLs that differ
            in user or vhost (they must be the nodes of one broker: the gateway stamps its
            user on what it publishes, and declares its topology in one vhost).
    """
    found = split_urls(urls)
    if not found:
        raise BrokerConfigError("no broker URL given")
    addresses: list[pika.URLParameters] = []
    for i, url in enumerate(found, 1):
        try:
            params = broker_parameters(url, tls)
            if "," in params.host:
                raise BrokerConfigError("a host name holds a comma: separate several broker "
                                        "URLs with commas, each starting with amqp:// or "
                                        "amqps://")
        except BrokerConfigError as exc:
            if len(found) == 1:
                raise
            raise BrokerConfigError(f"broker URL {i} of {len(found)}{_shown(url)}: {exc}"
                                    ) from None
        for name, value in options.items():
            setattr(params, name, value)
        addresses.append(params)
    if len({p.ssl_options is None for p in addresses}) > 1:
        raise BrokerConfigError("the broker URLs mix amqp:// and amqps://: use one for all")
    if len({(_user(p), p.virtual_host) for p in addresses}) > 1:
        raise BrokerConfigError("the broker URLs differ in user or vhost: give the nodes of one "
                                "broker, with the same user and vhost")
    return addresses


def _user(params: pika.ConnectionParameters) -> str | None:
    creds = params.credentials
    return creds.username if isinstance(creds, pika.PlainCredentials) else None


def address_of(params: pika.ConnectionParameters) -> str:
    """``params`` as a URL with the password masked (``amqp://guest:***@host:5672/%2F``)."""
    scheme = "amqps" if params.ssl_options is not None else "amqp"
    user = _user(params)
    login = f"{urllib.parse.quote(user, safe='')}:***@" if user is not None else ""
    host = f"[{params.host}]" if ":" in params.host else params.host
    vhost = urllib.parse.quote(params.virtual_host, safe="")
    return f"{scheme}://{login}{host}:{params.port}/{vhost}"


#: host:port/vhost of each address list -> index of the one that answered last in this process
_LAST_GOOD: dict[tuple[str, ...], int] = {}


def _key(addresses: Sequence[pika.ConnectionParameters]) -> tuple[str, ...]:
    return tuple(f"{p.host}:{p.port}/{p.virtual_host}" for p in addresses)


def in_order(addresses: Sequence[pika.ConnectionParameters]) -> list[pika.ConnectionParameters]:
    """``addresses`` in the order the next connect tries them: starting after the one that
    answered last in this process (from the first when none has), wrapping round."""
    start = (_LAST_GOOD.get(_key(addresses), -1) + 1) % max(1, len(addresses))
    return [*addresses[start:], *addresses[:start]]


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


def _open_one(params: pika.ConnectionParameters,
              connect: Callable[[pika.ConnectionParameters], pika.BlockingConnection]
              ) -> pika.BlockingConnection:
    try:
        return connect(params)
    except (pika.exceptions.AMQPError, OSError, AMQPConnectorException) as exc:
        found = tls_failure(exc) if params.ssl_options is not None else None
        if found is None and isinstance(exc, AMQPConnectorException):
            # a node that accepts and never answers: pika's stack timeout is no AMQPError
            raise pika.exceptions.AMQPConnectionError(describe_error(exc)) from exc
        if found is None:
            raise
        reason, detail = found
        host, port = params.host, params.port
        raise BrokerTLSError(
            f"TLS/certificate problem with the broker at {host}:{port}: "
            f"{_explain(reason, detail, host)}", host=host, port=port, reason=reason) from None


def refused(exc: BaseException) -> bool:
    """True for a connect error where a broker said no (a TLS refusal that names its reason, the
    login refused with 403/530): no retry or other node can help. (pika raises the same
    ``Probable...Error`` for a reset mid-handshake, as a restarting node does: no refusal.)"""
    if isinstance(exc, BrokerTLSError):
        return exc.reason != TLS_EOF
    return (isinstance(exc, (pika.exceptions.ConnectionClosedByBroker,
                             pika.exceptions.ProbableAuthenticationError,
                             pika.exceptions.ProbableAccessDeniedError,
                             pika.exceptions.AuthenticationError))
            and "ConnectionClosedByBroker" in f"{exc.__class__.__name__} {exc}")


def open_connection(params: pika.ConnectionParameters | Sequence[pika.ConnectionParameters], *,
                    connect: Callable[..., pika.BlockingConnection] | None = None
                    ) -> pika.BlockingConnection:
    """A blocking connection to ``params``, or to the first address of a list that answers.

    A list is tried in the order of :func:`in_order`, each address once with its own timeouts
    (``socket_timeout``, ``stack_timeout``). ``connect``: ``pika.BlockingConnection`` (tests).

    Raises:
        BrokerTLSError: the TLS handshake failed (message names host, port and the cause); for
            a list, when no address answered and one refused the handshake, or all closed it.
        BrokerUnreachable: no address of a list answered (each named with its error).
        pika.exceptions.AMQPError, OSError: one address (not a list) could not be reached
            (pika's stack timeout as an AMQPConnectionError), or, for a list, a node refused
            the login and none answered.
    """
    connect = connect or pika.BlockingConnection
    if isinstance(params, pika.connection.Parameters):
        return _open_one(params, connect)
    addresses = list(params)
    if not addresses:
        raise BrokerConfigError("no broker URL given")
    failures: list[tuple[pika.ConnectionParameters, BaseException]] = []
    for candidate in in_order(addresses):
        try:
            conn = _open_one(candidate, connect)
        except (pika.exceptions.AMQPError, OSError) as exc:
            failures.append((candidate, exc))
            log.info("broker %s did not answer (%s)", address_of(candidate), describe_error(exc))
            continue
        _LAST_GOOD[_key(addresses)] = next(i for i, p in enumerate(addresses) if p is candidate)
        if failures:
            log.warning("connected to broker %s; %s did not answer", address_of(candidate),
                        ", ".join(address_of(p) for p, _ in failures))
        return conn
    errors = [exc for _, exc in failures]
    if (refusal := next((exc for exc in errors if refused(exc)), None)) is not None:
        raise refusal
    if all(isinstance(exc, BrokerTLSError) for exc in errors):
        raise errors[0]
    raise BrokerUnreachable([(address_of(p), exc) for p, exc in failures])
