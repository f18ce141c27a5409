"""The job store's contract, on SQLite and on a real Redis server: inserts that keep the first,
compare-and-swap with the inserts it causes, the due index, leases, expiry, blobs, and many
processes racing for one document."""

from __future__ import annotations

import multiprocessing
import time

from darkroom.serve.jobs.store import Insert, open_store


def test_insert_keeps_the_first_and_swap_wins_once(store_uri):
    store = open_store(store_uri)
    doc, version, inserted = store.insert(Insert("job", "a", {"n": 1}, due=10.0))
    assert (doc, version, inserted) == ({"n": 1}, 1, True)
    assert store.insert(Insert("job", "a", {"n": 2})) == ({"n": 1}, 1, False)
    assert store.swap("job", "a", 1, {"n": 3}, due=20.0, expires=None,
                      inserts=(Insert("delivery", "a:start", {"e": "start"}, due=5.0),))
    assert not store.swap("job", "a", 1, {"n": 4}, due=None, expires=None,
                          inserts=(Insert("delivery", "a:other", {}, due=5.0),))
    assert store.get("job", "a") == ({"n": 3}, 2)
    assert store.get("delivery", "a:start") == ({"e": "start"}, 1)
    assert store.get("delivery", "a:other") is None  # a lost swap inserts nothing
    assert store.get_many("job", ["a", "b"]) == {"a": {"n": 3}}


def test_the_due_index_orders_queues_and_leases(store_uri):
    store = open_store(store_uri)
    for key, due in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("later", 100.0)]:
        store.insert(Insert("job", key, {}, due=due))
    store.insert(Insert("job", "done", {}))  # not in the index
    assert store.due("job", now=50.0, limit=10) == ["a", "b", "c"]
    assert store.due("job", now=50.0, limit=2) == ["a", "b"]
    assert [store.rank("job", k) for k in ("a", "b", "c")] == [0, 1, 2]
    # a lease taken over only once it has run out
    assert not store.swap("job", "later", 1, {"x": 1}, due=200.0, expires=None, if_due_by=50.0)
    store.touch("job", ["later", "done"], due=40.0)  # a heartbeat; "done" stays out
    assert store.due("job", now=50.0, limit=10) == ["a", "b", "c", "later"]
    assert store.swap("job", "later", 1, {"x": 1}, due=None, expires=None, if_due_by=50.0)
    assert "later" not in store.due("job", now=1e9, limit=10)
    assert store.due("job", now=1e9, limit=10) == ["a", "b", "c"]


def test_expired_documents_and_blobs_are_gone(store_uri):
    store = open_store(store_uri)
    soon = time.time() + 0.5
    store.insert(Insert("idem", "k", {"job": "a"}, expires=soon))
    store.put_blob("img:a:0", b"\x89PNG...", expires=soon)
    store.put_blob("rows:a", b"rows", expires=None)
    assert store.get("idem", "k") and store.get_blob("img:a:0") == b"\x89PNG..."
    time.sleep(0.7)
    store.sweep(time.time())
    assert store.get("idem", "k") is None and store.get_blob("img:a:0") is None
    assert store.insert(Insert("idem", "k", {"job": "b"}))[2]  # the key is free again
    store.delete_blobs(["rows:a"])
    assert store.get_blob("rows:a") is None


def _race(uri: str, worker: int, results) -> None:
    store = open_store(uri)
    won = 0
    for _ in range(50):
        doc, version = store.get("job", "x")
        if store.swap("job", "x", version, {"count": doc["count"] + 1, "by": worker}, due=None,
                      expires=None):
            won += 1
    results.put(won)


def test_processes_racing_on_one_document_lose_no_update(store_uri):
    """Four processes each try 50 read-modify-swaps: the count equals the swaps that won."""
    store = open_store(store_uri)
    store.insert(Insert("job", "x", {"count": 0}))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_race, args=(store_uri, i, results)) for i in range(4)]
    for worker in workers:
        worker.start()
    won = sum(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    assert store.get("job", "x")[0]["count"] == won and won >= 50
