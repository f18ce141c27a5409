"""The job state machine on SQLite and on a real Redis server: claims, leases run out and taken
over, attempts spent, results taken only from the current attempt (a job never completes
twice), cancellation, idempotency keys, expiry."""

from __future__ import annotations

import time

import pytest

from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.jobs.book import (
    IdempotencyConflict,
    Job,
    JobBook,
    JobSettings,
    Webhook,
    new_id,
)
from darkroom.serve.jobs.store import open_store

ANSWER = {"image": b"\x89PNG", "error": None, "seed": 1, "width": 8, "height": 8,
          "batch_size": 1, "flagged": False, "safety_score": None}


def book_of(uri: str, **changes) -> JobBook:
    settings = JobSettings(store=uri, **{"lease_s": 0.3, "max_attempts": 2, **changes})
    return JobBook(open_store(uri), settings)


def job(n: int = 1, owner: str = "alice", body: str = "b", hook: Webhook | None = None) -> Job:
    now = time.time()
    return Job(id=new_id(), owner=owner, created_at=now, queued_at=now, n=n, max_attempts=2,
               body_sha256=body, results=[None] * n, webhook=hook)


ROWS = [RequestRow(seed=1, prompt="a fox", image=b"\x00\xffbytes")]


def test_a_job_whose_worker_died_is_taken_up_once_and_never_completes_twice(store_uri):
    book = book_of(store_uri)
    first, _ = book.submit(job(), ROWS)
    assert book.rows(first)[0].image == b"\x00\xffbytes"
    (taken,) = book.claim("w1", 4)
    assert (taken.status, taken.attempt) == ("in_progress", 1)
    assert book.claim("w2", 4) == []  # leased to w1
    book.touch([taken.id])  # w1's heartbeat holds it
    time.sleep(0.2)
    assert book.claim("w2", 4) == []
    time.sleep(0.4)  # no heartbeat: the lease runs out
    (again,) = book.claim("w2", 4)
    assert again.attempt == 2 and "attempt 1: its worker stopped answering" in again.failures
    assert book.finish(taken.id, 1, 0, ANSWER) is None  # the stale worker's result is refused
    done = book.finish(taken.id, 2, 0, ANSWER)
    assert done.status == "succeeded" and book.image(taken.id, 0) == b"\x89PNG"
    assert book.finish(taken.id, 2, 0, ANSWER) is None  # and never taken twice
    assert book.rows.__self__.store.get_blob(f"rows:{taken.id}") is None  # inputs freed


def test_a_job_past_its_attempts_fails_with_a_clear_error(store_uri):
    book = book_of(store_uri)
    submitted, _ = book.submit(job(), ROWS)
    (taken,) = book.claim("w1", 1)
    book.requeue(taken.id, 1, "the model replica died while working on it")
    (taken,) = book.claim("w1", 1)
    failed = book.requeue(taken.id, 2, "the model replica died while working on it")
    assert failed.status == "failed"
    assert failed.error["message"] == ("the model replica died while working on it "
                                       "(attempt 2 of 2)")
    assert failed.error["type"] == "server_error"
    # a lease that runs out on the last attempt fails too
    other, _ = book.submit(job(), ROWS)
    book.claim("w1", 1)
    book.requeue(other.id, 1, "died")
    book.claim("w1", 1)
    time.sleep(0.4)
    assert book.claim("w2", 1) == []
    assert "stopped answering during attempt 2 of 2" in book.get(other.id).error["message"]


def test_a_busy_model_gives_the_attempt_back(store_uri):
    book = book_of(store_uri)
    book.submit(job(), ROWS)
    (taken,) = book.claim("w1", 1)
    back = book.requeue(taken.id, 1, "busy", delay_s=0.2, counted=False)
    assert (back.status, back.attempt) == ("queued", 0)
    assert book.claim("w1", 1) == []  # not before its delay
    time.sleep(0.25)
    assert book.claim("w1", 1)[0].attempt == 1


def test_queue_positions_and_cancellation(store_uri):
    book = book_of(store_uri)
    jobs = [book.submit(job(), ROWS)[0] for _ in range(3)]
    assert [book.position(j) for j in jobs] == [0, 1, 2]
    cancelled = book.cancel(jobs[1].id)
    assert cancelled.status == "cancelled" and book.position(jobs[2]) == 1
    (running,) = book.claim("w", 1)
    asked = book.cancel(running.id)
    assert asked.status == "in_progress" and asked.cancel_requested_at
    assert book.stopped({running.id: 1, jobs[2].id: 5}) == {
        running.id: asked.cancel_requested_at, jobs[2].id: None}  # not this worker's attempt
    stop = {"step": 3, "steps": 50, "after_request": 1}
    done = book.finish(running.id, 1, 0, {"cancelled": True}, stop)
    assert done.status == "cancelled" and done.stop == stop


def test_an_idempotency_key_returns_the_first_job_and_refuses_another_body(store_uri):
    book = book_of(store_uri)
    first, created = book.submit(job(body="one"), ROWS, key="k1")
    again, created_again = book.submit(job(body="one"), ROWS, key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        book.submit(job(body="two"), ROWS, key="k1")
    other, created = book.submit(job(body="one", owner="bob"), ROWS, key="k1")
    assert created and other.id != first.id  # keys are per API key


def test_transitions_write_their_webhook_deliveries(store_uri):
    book = book_of(store_uri)
    hook = Webhook(url="https://example.com/hook", events=("start", "completed"))
    submitted, _ = book.submit(job(hook=hook), ROWS)
    (taken,) = book.claim("w", 1)
    book.finish(taken.id, 1, 0, ANSWER)
    store = book.store
    due = store.due("delivery", time.time() + 1, 10)
    assert sorted(due) == [f"{taken.id}:completed", f"{taken.id}:start"]
    assert store.get("delivery", f"{taken.id}:start")[0]["url"] == hook.url


def test_finished_jobs_expire(store_uri):
    book = book_of(store_uri, result_ttl_s=0.5)
    submitted, _ = book.submit(job(), ROWS)
    book.claim("w", 1)
    book.finish(submitted.id, 1, 0, ANSWER)
    assert book.get(submitted.id).status == "succeeded"
    time.sleep(0.7)
    book.store.sweep(time.time())
    assert book.get(submitted.id) is None
