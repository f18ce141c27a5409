"""A store that answers 503 SlowDown for a while, and output a job cannot write: each fault real.

`FlakyStore` is a real HTTP proxy in front of the test session's S3 server (moto) that answers
`503 SlowDown` to the next N requests of a method (optionally only for keys matching a pattern),
or to all of them; a job reaches it through `storage_options` (its endpoint), so Ray's workers,
started before this test, use it too. Credentials are refused by a second moto server that
enforces them.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from darkroom.cli import main
from darkroom.jobs import output, resume
from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import run_job
from darkroom.platform.data import layout, storage
from darkroom.platform.data.runinfo import RunInfo
from darkroom.platform.data.storage import StoreUnavailable

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyStore:
    """A proxy to an S3-compatible server that answers 503 SlowDown when told to."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.answered: Counter = Counter()  # 503s sent, per method
        self._rules: list[list] = []  # [method, key pattern, failures left]
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self.options = {"endpoint_override": self.endpoint, "scheme": "http"}

    def fail(self, method: str, times: float = math.inf, keys: str = "") -> None:
        """Answer 503 to the next `times` requests of `method` whose path matches `keys`."""
        with self._lock:
            self._rules.append([method, re.compile(keys), times])

    def heal(self) -> None:
        with self._lock:
            self._rules.clear()

    def should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule[0] == method and rule[2] > 0 and rule[1].search(path):
                    rule[2] -= 1
                    self.answered[method] += 1
                    return True
        return False


def _handler(store: FlakyStore) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body

        def _relay(self) -> None:
            body = self._body()
            if store.should_fail(self.command, urlsplit(self.path).path):
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOW_DOWN)
                return
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("transfer-encoding", "expect", "content-length")}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(store.upstream, timeout=30)
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay

    return Handler


@pytest.fixture
def flaky(s3_server):
    store = FlakyStore(s3_server)
    yield store
    store.server.shutdown()


def call(run_id: str, ids: range) -> pa.Table:
    """One actor call's output rows (image columns plus `error`)."""
    from darkroom.jobs.workers import OUTPUT_SCHEMA

    return pa.Table.from_pylist([{
        "run_id": run_id, "row_id": f"{run_id}/{i:05d}/0", "prompt_id": f"{i:05d}",
        "sample_idx": 0, "prompt": f"prompt {i}", "image": b"png", "gen_seconds": 0.5,
        "error": None} for i in ids], schema=OUTPUT_SCHEMA)


def markers(job_dir) -> set:
    return {e.loc for run in layout.run_dirs(job_dir) for e in storage.list_dir(run / "images")
            if e.loc.name.endswith(layout.COMMIT_SUFFIX)}


def set_aside(job_dir) -> list:
    return [e.loc for run in layout.run_dirs(job_dir) for e in storage.list_dir(run / "images")
            if e.loc.name.startswith(".unreadable-")]


# -- 503 SlowDown: retried; bad bytes are still found -------------------------------------------


def test_writes_and_the_resume_read_retry_503_and_only_bad_bytes_are_unreadable(
        s3, flaky, monkeypatch):
    job_dir = storage.location(f"{s3}/flaky")
    storage.set_options(job_dir, flaky.options)  # what a job's storage_options do
    flaky.fail("PUT", 4)  # a blip while the actor writes: four uploads refused
    output.write_job_files(job_dir, None, [RunInfo(
        run_id="r1", model={"model": "tiny:sd"}, sampler={"name": "ddim"}, steps=2,
        guidance_scale=5.0)])
    for start in range(0, 12, 4):
        output.write_call(job_dir, call("r1", range(start, start + 4)), "inv")
    assert flaky.answered["PUT"] == 4
    files = layout.parquet_files(job_dir / "r1" / layout.IMAGES)
    entries = [(layout.IMAGES, str(f)) for f in files]
    assert len(files) == 3

    # the resume scan's reads refused for a while: every file is good
    flaky.fail("GET", 4)
    flaky.fail("HEAD", 3)
    summaries, done = resume.verify_files(entries, str(job_dir), flaky.options)
    assert [item["error"] for item in summaries] == [None] * 3 and done.num_rows == 12
    assert flaky.answered["GET"] == 4 and flaky.answered["HEAD"] == 3

    # bad bytes are still found, through the same blips: a truncated file and an empty one
    data = storage.read_bytes(files[1])
    storage.write_bytes(files[1], data[: len(data) // 2])
    storage.write_bytes(files[2], b"")
    flaky.fail("GET", 3)
    summaries, _ = resume.verify_files(entries, str(job_dir), flaky.options)
    errors = [item["error"] for item in summaries]
    assert errors[0] is None and "Parquet" in errors[1] and "0 bytes" in errors[2], errors

    # a store that does not come back: an error of the store, not a verdict on the file
    monkeypatch.setenv(storage.RETRY_ENV, "1")
    flaky.fail("GET")
    with pytest.raises(StoreUnavailable, match="kept failing for 1 s"):
        resume.verify_files(entries[:1], str(job_dir), flaky.options)


@pytest.mark.slow
def test_a_rerun_while_the_store_answers_503_makes_nothing_again_then_stops_clean(
        ray_session, s3, flaky, tmp_path):
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(12)))
    job = {"name": "slow-down", "output": f"{s3}/out", "storage_options": flaky.options,
           "prompts": {"file": str(tmp_path / "prompts.txt"), "images_per_prompt": 2},
           "models": [{"model": "tiny:sd"}], "sweep": {"sampler": ["ddim"], "steps": [2]},
           "generation": {"width": 32, "height": 32, "batch_size": 2},
           "compute": {"actors": {"min": 1, "max": 1}, "checkpoint_rows": 2},
           "runtime": {"device": "cpu"}}
    spec = validate(job)
    job_dir = storage.location(f"{s3}/out/slow-down")
    flaky.fail("PUT", 5, keys=r"\.parquet$")  # the actors' uploads meet a blip
    assert run_job(spec).generated == 24 and flaky.answered["PUT"] == 5
    committed = markers(job_dir)
    assert len(committed) == 12

    # the rerun's scan meets 503s on its reads: retried, nothing set aside, nothing made again
    flaky.fail("GET", 10, keys=r"\.parquet$")
    flaky.fail("HEAD", 4)
    messages: list[str] = []
    assert run_job(spec, log=messages.append).generated == 0
    assert flaky.answered["GET"] == 10
    assert not [m for m in messages if "unreadable" in m], messages
    assert markers(job_dir) == committed and not set_aside(job_dir)

    # a store that stays down: the run stops with exit 1 and one line, the folder as it was
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    flaky.fail("GET", keys=r"\.parquet$")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env[storage.RETRY_ENV] = "2"
    done = subprocess.run([sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml")],
                          env=env, capture_output=True, text=True, timeout=300)
    flaky.heal()
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "failed: StoreUnavailable: reading s3://" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "RayTaskError" not in done.stderr
    assert markers(job_dir) == committed and not set_aside(job_dir)


# -- output that cannot be written: refused before anything starts --------------------------------


def refused(tmp_path: Path, capsys, output: str, **changes) -> str:
    """`validate` and `run` of a job writing to `output`: exit 2 naming `output`, no trace."""
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "pre", "output": output, "prompts": {"list": ["a red fox"]},
        "models": [{"model": "tiny:sd"}], **changes}))
    for command in ("validate", "run"):
        code = main([command, str(tmp_path / "job.yaml")])
        err = capsys.readouterr().err
        assert code == 2 and "  output: " in err and "Traceback" not in err, err
    return err


def test_a_missing_bucket_an_object_in_the_way_and_no_credentials_are_refused(
        s3, tmp_path, monkeypatch, capsys):
    err = refused(tmp_path, capsys, "s3://no-such-bucket-darkroom/out")
    assert "the bucket `no-such-bucket-darkroom`" in err and "does not exist" in err
    storage.write_text(storage.location(f"{s3}/taken/pre"), "an object, not a folder")
    assert "is a file, not a folder" in refused(tmp_path, capsys, f"{s3}/taken")
    with monkeypatch.context() as env:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.delenv(name)
        env.setenv("HOME", str(tmp_path))  # no ~/.aws either
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        assert "no credentials for s3://" in refused(tmp_path, capsys, f"{s3}/out")
    # nothing was written: no lease, no job folder
    assert [e.loc.name for e in storage.list_dir(storage.location(s3))] == ["taken"]
    assert [e.loc.name for e in storage.list_dir(storage.location(f"{s3}/taken"))] == ["pre"]


@pytest.fixture(scope="module")
def strict_s3(tmp_path_factory):
    """A moto server that enforces credentials, with one user allowed everything and a bucket."""
    import socket

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("strict-moto") / "moto.log"
    # the first four requests (the setup below) are let through; every later one is checked
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}, stdout=log.open("w"),
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:  # a TCP connect, not a request: requests count against the four
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    url = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=url)
    iam.create_user(UserName="darkroom")
    key = iam.create_access_key(UserName="darkroom")["AccessKey"]
    iam.put_user_policy(UserName="darkroom", PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="strict")
    yield url, key["AccessKeyId"], key["SecretAccessKey"]
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.ray
def test_credentials_the_store_refuses_are_named_before_anything_starts(
        strict_s3, tmp_path, monkeypatch, capsys):
    url, key_id, secret = strict_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    for wrong_id, wrong_secret, answer in ((key_id, "not-the-secret", "SIGNATURE_DOES_NOT_MATCH"),
                                          ("AKIANOSUCHKEY", secret, "INVALID_ACCESS_KEY_ID")):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", wrong_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
        err = refused(tmp_path, capsys, "s3://strict/out")
        assert "refused this machine's credentials" in err and answer in err, err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert main(["validate", str(tmp_path / "job.yaml")]) == 0, capsys.readouterr().err
