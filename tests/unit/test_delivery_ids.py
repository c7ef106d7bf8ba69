"""dramatiq's per-delivery ids: unique across threads, and apart between a parent and a child."""

from __future__ import annotations

import os
import threading

from workers.broker import wrap_delivery


def _ids(n: int) -> list[str]:
    return [wrap_delivery(queue="eeszt.batch", body=b"{}").message_id for _ in range(n)]


def test_ids_are_unique_across_threads():
    found: list[list[str]] = []
    threads = [threading.Thread(target=lambda: found.append(_ids(2000))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in found for i in ids]
    assert len(every) == 16_000 == len(set(every))


def test_a_forked_child_numbers_its_deliveries_apart():
    parent = set(_ids(100))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        os.write(write, "\n".join(_ids(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    assert len(child) == 100 and not child & parent
    assert {i.split("-")[0] for i in child} != {i.split("-")[0] for i in parent}
