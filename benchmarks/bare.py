"""The bare pipeline: the least Python can do per care event, the baseline for the gateway.

P processes (multiprocessing, spawn). Each process:

- gets one SAML token from the STS at start (``EesztClient.issue_token(method="x509")``);
- loads the institution key into xmlsec once (:class:`workers.wsse.WsseSigner`, a plain xmlsec
  signer);
- opens one urllib3 keep-alive ``HTTPSConnectionPool`` over mutual TLS (``maxsize`` = threads),
  or, with ``--transport curl``, a pool of as many libcurl handles (pycurl), each with its
  kept-alive connection: the bare pipeline on the gateway's default HTTP client, for a
  like-for-like ratio;
- consumes ``eeszt.batch`` with one pika ``BlockingConnection``, prefetch = threads × 2, and
  hands each delivery through a ``queue.Queue`` to T worker threads, which do:
  ``json.loads`` → the ``esemenyKezdet`` element from a string template →
  ``WsseSigner.sign_operation`` (the envelope and Security header from the signer's string
  template, one ``lxml.etree.fromstring``, xmlsec signs Body + Timestamp, one ``tostring``, the
  SAML assertion's bytes put in the header) → POST → ack through
  ``connection.add_callback_threadsafe``. The signing is the gateway's own, so the two differ
  only in what the gateway adds around it.

No pydantic, no dramatiq, no replies, no audit: a failed call is counted, logged and requeued
(``basic_nack``; the simulator dedupes by key). The pool's connections are opened before the
go signal (a TLS handshake to a busy simulator can take seconds). For the benchmark each process writes
``READY_DIR/ready-<pid>`` once it is set up and starts consuming only when ``GO_FILE`` exists,
so its start-up is never inside the measured window.

Run: ``python -m benchmarks.bare --broker-url … --eeszt-url … --pki-dir … --processes P
--threads T [--ready-dir D --go-file F]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import queue
import signal
import ssl
import sys
import threading
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger("benchmarks.bare")

QUEUE = "eeszt.batch"
_NS = "urn:eeszt-gateway:contract:v1:esemenykatalogus"
_C = "urn:eeszt-gateway:contract:v1:common"
PATH = "/services/esemenyKatalogus"
HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{_NS}/esemenyKezdet"'}
TEMPLATE = (
    f'<tns:esemenyKezdet xmlns:tns="{_NS}" xmlns:c="{_C}">'
    "<tns:header><c:idempotencyKey>{key}</c:idempotencyKey><c:messageId>{mid}</c:messageId>"
    "<c:institution>{inst}</c:institution><c:createdAt>{created}</c:createdAt></tns:header>"
    "<tns:taj>{taj}</tns:taj><tns:eventId>{event_id}</tns:eventId>"
    "<tns:eventType>{event_type}</tns:eventType><tns:startedAt>{started}</tns:startedAt>{bno}"
    "</tns:esemenyKezdet>"
)


def operation_xml(body: bytes) -> str:
    """The Body's content (the ``esemenyKezdet`` element) for one wire-format care event, from
    the string template."""
    d = json.loads(body)
    p = d["payload"]
    bno = p.get("bno")
    return TEMPLATE.format(
        key=escape(d["idempotency_key"]), mid=escape(d["message_id"]),
        inst=escape(d["institution"]), created=escape(d["created_at"]),
        taj=escape(p["taj"]), event_id=escape(p["event_id"]),
        event_type=escape(p["event_type"]), started=escape(p["started_at"]),
        bno=f"<tns:bno>{escape(bno)}</tns:bno>" if bno else "")


def signed_request(body: bytes, signer, assertion) -> bytes:
    """One care event as the signed SOAP request: the template, then the gateway's own
    ``WsseSigner.sign_operation`` (one lxml parse, xmlsec, one serialization)."""
    return signer.sign_operation(operation_xml(body), assertion=assertion)


def _process(broker_url: str, eeszt_url: str, pki_dir: str, threads: int, ready_dir: str | None,
             go_file: str | None, transport: str = "urllib3") -> None:
    import os

    import pika

    from workers.client.client import ClientFiles, EesztClient
    from workers.client.wsse import WsseSigner

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s bare[%(process)d] %(message)s")
    files = ClientFiles.from_pki_dir(pki_dir)
    signer = WsseSigner(key_pem=files.institution_key.read_bytes(),
                        cert_pem=files.institution_cert.read_bytes())
    sts = EesztClient(base_url=eeszt_url, files=files)
    try:
        assertion = sts.issue_token(method="x509").assertion
    finally:
        sts.close()
    post, warm = (_curl_post if transport == "curl" else _urllib3_post)(eeszt_url, files, threads)

    work: queue.Queue = queue.Queue()
    failures = [0]
    stopping = threading.Event()
    current: list = [None, None]  # the live (connection, channel)

    def handle(body: bytes) -> None:
        status, answer = post(signed_request(body, signer, assertion))
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {answer[:300]!r}")

    def worker() -> None:
        while True:
            item = work.get()
            if item is None:
                return
            conn, channel, tag, body = item
            try:
                handle(body)
                done = partial(channel.basic_ack, tag)
            except Exception as exc:  # counted and requeued: at-least-once, EESZT dedupes by key
                failures[0] += 1
                log.warning("event failed, requeued: %s", exc)
                done = partial(channel.basic_nack, tag, requeue=True)
            try:
                conn.add_callback_threadsafe(done)
            except pika.exceptions.AMQPError:
                pass  # that connection is gone: the broker has requeued the delivery

    warm()
    for i in range(threads):
        threading.Thread(target=worker, name=f"bare-{i}", daemon=True).start()

    def stop(*_: object) -> None:
        stopping.set()
        conn, channel = current
        if conn is not None:
            try:
                conn.add_callback_threadsafe(channel.stop_consuming)
            except pika.exceptions.AMQPError:
                pass  # already closed: nothing left to stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready_dir:
        Path(ready_dir, f"ready-{os.getpid()}").touch()
    if go_file:
        while not Path(go_file).exists():
            time.sleep(0.005)
    while not stopping.is_set():  # reconnect after a lost broker connection
        try:
            conn = pika.BlockingConnection(pika.URLParameters(broker_url))
            channel = conn.channel()
            channel.basic_qos(prefetch_count=threads * 2)
            current[:] = [conn, channel]

            def on_message(ch, method, _props, body, conn=conn) -> None:
                work.put((conn, ch, method.delivery_tag, body))

            channel.basic_consume(QUEUE, on_message)
            channel.start_consuming()
            conn.close()
        except pika.exceptions.AMQPError as exc:
            if stopping.is_set():
                break
            log.warning("broker connection lost (%r); reconnecting", exc)
            time.sleep(1)
    if failures[0]:
        log.warning("%d events failed", failures[0])


def _urllib3_post(eeszt_url: str, files, threads: int):
    """``(post(body) -> (status, answer), warm())`` over one urllib3 pool of ``threads``
    connections."""
    import urllib3

    ctx = ssl.create_default_context(cafile=str(files.server_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.access_cert), str(files.access_key))
    u = urlsplit(eeszt_url)
    pool = urllib3.HTTPSConnectionPool(
        u.hostname, u.port or 443, maxsize=threads, block=True, ssl_context=ctx, retries=False,
        timeout=urllib3.Timeout(connect=5.0, read=30.0))

    def post(data: bytes) -> tuple[int, bytes]:
        resp = pool.urlopen("POST", PATH, body=data, headers=HEADERS, retries=False,
                            preload_content=True)
        return resp.status, resp.data

    def open_one(barrier: threading.Barrier) -> None:
        resp = pool.urlopen("GET", f"{PATH}?wsdl", retries=False, preload_content=False)
        try:
            barrier.wait(timeout=60)
        finally:
            resp.read()
            resp.release_conn()

    return post, lambda: _warm(open_one, threads)


def _curl_post(eeszt_url: str, files, threads: int):
    """``(post(body) -> (status, answer), warm())`` over a pool of ``threads`` libcurl handles,
    each with its kept-alive connection (no resend guard: the simulator dedupes by key here)."""
    import pycurl

    url = eeszt_url.rstrip("/") + PATH
    headers = [f"{k}: {v}" for k, v in HEADERS.items()] + ["Expect:"]
    pool: queue.LifoQueue = queue.LifoQueue()
    for _ in range(threads):
        c = pycurl.Curl()
        for opt, value in ((pycurl.NOSIGNAL, 1), (pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_2),
                           (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
                           (pycurl.CAINFO, str(files.server_ca)),
                           (pycurl.SSLCERT, str(files.access_cert)),
                           (pycurl.SSLKEY, str(files.access_key)),
                           (pycurl.CONNECTTIMEOUT_MS, 5000), (pycurl.TIMEOUT_MS, 35000),
                           (pycurl.HTTPHEADER, headers)):
            c.setopt(opt, value)
        pool.put(c)

    def post(data: bytes) -> tuple[int, bytes]:
        c, chunks = pool.get(), []
        try:
            c.setopt(pycurl.URL, url)
            c.setopt(pycurl.POSTFIELDS, data)
            c.setopt(pycurl.WRITEFUNCTION, chunks.append)
            c.perform()
            return c.getinfo(pycurl.RESPONSE_CODE), b"".join(chunks)
        finally:
            pool.put(c)

    def open_one(barrier: threading.Barrier) -> None:
        c = pool.get()
        try:
            c.setopt(pycurl.URL, url + "?wsdl")
            c.setopt(pycurl.HTTPGET, 1)
            c.setopt(pycurl.WRITEFUNCTION, lambda _chunk: None)
            c.perform()
            barrier.wait(timeout=60)
        finally:
            pool.put(c)

    return post, lambda: _warm(open_one, threads)


def _warm(open_one, size: int) -> None:
    """Open all ``size`` keep-alive connections now (T concurrent GETs of the WSDL, held until
    all have their connection), before the go signal: a TLS handshake to a busy asyncio server
    can take seconds, and a pipeline that is meant to be fast does not pay it mid-run."""
    barrier = threading.Barrier(size)
    threads = [threading.Thread(target=open_one, args=(barrier,), daemon=True) for _ in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(*, broker_url: str, eeszt_url: str, pki_dir: str, processes: int, threads: int,
        ready_dir: str | None = None, go_file: str | None = None, transport: str = "urllib3") -> int:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_process, name=f"bare-{i}",
                         args=(broker_url, eeszt_url, pki_dir, threads, ready_dir, go_file,
                                               transport))
             for i in range(processes)]
    for p in procs:
        p.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    while not stopping.wait(0.5):
        if not any(p.is_alive() for p in procs):
            break
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker-url", required=True)
    ap.add_argument("--eeszt-url", required=True)
    ap.add_argument("--pki-dir", required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--ready-dir")
    ap.add_argument("--go-file")
    ap.add_argument("--transport", choices=("urllib3", "curl"), default="urllib3",
                    help="HTTP client: a urllib3 pool (the reference bare pipeline) or libcurl "
                         "handles (the gateway's default client)")
    ns = ap.parse_args(argv)
    return run(broker_url=ns.broker_url, eeszt_url=ns.eeszt_url, pki_dir=ns.pki_dir,
               processes=ns.processes, threads=ns.threads, ready_dir=ns.ready_dir,
               go_file=ns.go_file, transport=ns.transport)


if __name__ == "__main__":
    sys.exit(main())
