"""`darkroom arena` as a real server process: killed (SIGKILL) while two raters vote, it loses
no acknowledged vote and the same links work after a restart; and two raters vote in a real
browser (Debian's Chromium driven by Playwright), by click and by keyboard."""

from __future__ import annotations

import io
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from darkroom.evals.arena.source import Runs
from darkroom.evals.arena.store import VoteStore
from tests.evals.arena import server

CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def vote_until_cut_off(base: str, token: str, acknowledged: list, stop: threading.Event) -> None:
    """Vote as fast as the server answers; note every vote it acknowledged; return when the
    connection fails (the server was killed)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                shown = client.get("/api/next").json()
                if shown["done"]:
                    return
                answer = ["left", "right", "tie", "both_bad"][len(acknowledged) % 4]
                reply = client.post("/api/vote", json={
                    "ticket": shown["ticket"], "question": "overall", "answer": answer})
            except httpx.TransportError:
                return
            assert reply.status_code == 200, reply.text
            acknowledged.append((shown["ticket"], answer, reply.json()["vote_id"]))


@pytest.mark.slow
def test_killing_the_server_while_raters_vote_loses_no_acknowledged_vote(make_job, tmp_path):
    job = make_job(tmp_path, runs=3, prompts=8, per_prompt=3)  # 72 pairs a rater
    store = f"sqlite:///{tmp_path / 'votes.sqlite'}"
    acknowledged: list = []
    links = None
    for kill in range(3):
        arena = server.start(job, store, "--raters", "alice,bob")
        links = links or arena.tokens
        assert arena.tokens == links, "the same links must work after a restart"
        stop = threading.Event()
        voters = [threading.Thread(target=vote_until_cut_off, args=(
            arena.base, arena.tokens[r], acknowledged, stop)) for r in ("alice", "bob")]
        for voter in voters:
            voter.start()
        target = len(acknowledged) + 15 + 5 * kill
        deadline = time.monotonic() + 60
        while len(acknowledged) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        arena.kill()  # mid-stream: both raters have requests in flight
        stop.set()
        for voter in voters:
            voter.join(timeout=30)
        assert len(acknowledged) >= target, "\n".join(arena.output)
    stored = {(v["ticket"], v["question"]): v for v in VoteStore(store).votes()}
    assert len(stored) == len(VoteStore(store).votes())  # no vote twice
    lost = [a for a in acknowledged if (a[0], "overall") not in stored]
    assert lost == []
    assert all(stored[t, "overall"]["answer"] == answer and
               stored[t, "overall"]["vote_id"] == vote_id for t, answer, vote_id in acknowledged)


def _colour(png: bytes) -> tuple[int, ...]:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return tuple(int(c) for c in pixels[-1, -1])  # a corner: the run's own colour


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium; .ci/run installs it)")
def test_two_raters_vote_in_a_real_browser_by_click_and_by_keyboard(job, tmp_path):
    from playwright.sync_api import sync_playwright

    store = f"sqlite:///{tmp_path / 'votes.sqlite'}"
    arena = server.start(job, store, "--raters", "alice,bob", "--question",
                         "prompt=Which follows the prompt better?", "--question",
                         "looks=Which looks better?")
    runs = Runs(job)
    try:
        assert httpx.get(arena.base + "/api/next").status_code == 401
        assert httpx.get(arena.base + "/").status_code == 401
        pressed: dict[str, list[tuple[str, str, str]]] = {}  # rater -> (ticket, question, ans)
        shown: dict[str, tuple] = {}  # ticket -> the colours of the images on the page
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            plan = {"alice": [("click", a) for a in ("left", "right", "tie", "both_bad",
                                                     "left", "right")],
                    "bob": [("key", k) for k in ("ArrowLeft", "2", "ArrowUp", "4", "1",
                                                  "ArrowRight")]}
            keys = {"ArrowLeft": "left", "1": "left", "2": "right", "ArrowRight": "right",
                    "ArrowUp": "tie", "3": "tie", "4": "both_bad", "ArrowDown": "both_bad"}
            for rater, steps in plan.items():
                page = browser.new_context().new_page()
                page.goto(arena.base + "/")  # 401: the login form
                errors = []  # from here on, none
                page.on("console", lambda m, errors=errors: m.type == "error" and
                        errors.append(m.text))
                page.fill("input[name=token]", arena.tokens[rater])
                page.click("button[type=submit]")
                pressed[rater] = []
                for how, what in steps:
                    page.wait_for_selector(".question.active button:not([disabled])")
                    page.wait_for_function("document.getElementById('left').complete && "
                                           "document.getElementById('left').naturalWidth > 0")
                    state = page.evaluate("current")
                    question = page.get_attribute(".question.active", "data-question")
                    if state["ticket"] not in shown:
                        shown[state["ticket"]] = tuple(
                            _colour(page.context.request.get(
                                arena.base + page.get_attribute(f"#{side}", "src")).body())
                            for side in ("left", "right"))
                    assert page.text_content("#prompt") == state["prompt"]
                    votes_before = state["progress"]["votes"]
                    if how == "click":
                        page.click(f".question.active button[data-answer={what}]")
                        answer = what
                    else:
                        page.keyboard.press(what)
                        answer = keys[what]
                    page.wait_for_function(  # acknowledged, and the page moved on
                        "document.getElementById('progress').textContent.startsWith("
                        f"'{votes_before + 1} votes')")
                    pressed[rater].append((state["ticket"], question, answer))
                assert "6 votes cast" in page.text_content("#progress")
                if rater == "alice":
                    page.screenshot(path=str(tmp_path / "rating.png"))
                assert errors == []
            viewer = browser.new_context().new_page()
            viewer.goto(arena.base + f"/login?token={arena.tokens['owner']}")
            assert viewer.url.endswith("/results")
            assert "Krippendorff" in viewer.content() or "Agreement" in viewer.content()
            browser.close()
    finally:
        arena.stop()
    votes = VoteStore(store).votes()
    assert len(votes) == 12
    colours = {run: _colour(runs.image(run, next(iter(runs.rows[run])))) for run in runs.ids}
    for rater, steps in pressed.items():
        mine = [v for v in votes if v["rater"] == rater]
        assert [(v["ticket"], v["question"], v["answer"]) for v in mine] == steps
        for vote in mine:  # the run stored on each side is the run whose image was there
            assert shown[vote["ticket"]] == (colours[vote["left_run"]],
                                             colours[vote["right_run"]])
            assert vote["prompt_id"] in {k[0] for k in runs.shared(vote["left_run"],
                                                                   vote["right_run"])}
    assert {v["question"] for v in votes} == {"prompt", "looks"}
