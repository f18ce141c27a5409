"""The rating app in-process (ASGI client, real SQLite store, real Parquet job folders): tokens
and roles, blind pairs with random sides, votes stored as they arrive and stored once, a pair
never shown twice, two question sets, 20 concurrent raters, the active design and the results."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from darkroom.evals.arena.app import COOKIE, build_app
from darkroom.evals.arena.rounds import Round
from darkroom.evals.arena.source import Runs
from darkroom.evals.arena.spec import ArenaSpec, Question
from darkroom.evals.arena.store import VoteStore, now
from tests.evals.arena.raters import check_once, vote_concurrently

TWO = (Question(id="prompt", text="Which follows the prompt better?"),
       Question(id="looks", text="Which looks better?"))


def open_round(job_dir, tmp_path, raters=("alice", "bob"), **spec):
    store = VoteStore(f"sqlite:///{tmp_path / 'votes.sqlite'}")
    store.add_raters("rounds", list(raters), "rater")
    store.add_raters("rounds", ["owner"], "viewer")
    arena = Round(Runs(job_dir), store, ArenaSpec(round="rounds", **spec), seed=0, resamples=30)
    tokens = {name: t for name, (_, t) in arena.tokens().items()}
    return arena, build_app(arena), tokens


def test_every_route_needs_a_token_and_the_right_role(job, tmp_path, asgi):
    arena, app, tokens = open_round(job, tmp_path)
    call = asgi(app)
    routes = [("GET", "/"), ("GET", "/api/next"), ("POST", "/api/vote"),
              ("GET", "/api/image/abc/left"), ("GET", "/results"), ("GET", "/api/results")]
    for method, path in routes:
        for token in (None, "0" * 32):
            answer = call(method, path, token, json={})
            assert answer.status_code == 401, (method, path, token, answer.text)
    assert "token" in call("GET", "/").text  # the login form
    assert call("GET", "/results", tokens["alice"]).status_code == 403
    assert call("GET", "/api/next", tokens["owner"]).status_code == 403
    assert call("POST", "/login", content=b"token=wrong").status_code == 401
    login = call("POST", "/login", content=f"token={tokens['alice']}".encode())
    assert login.status_code == 303 and COOKIE in login.headers["set-cookie"]
    assert "HttpOnly" in login.headers["set-cookie"]
    assert "samesite=strict" in login.headers["set-cookie"].lower()
    cookie = {COOKIE: tokens["alice"]}
    assert call("GET", "/api/next", cookies=cookie).status_code == 200
    page = call("GET", "/", cookies=cookie)
    assert page.status_code == 200 and "rating as <b>alice</b>" in page.text
    viewer = call("GET", f"/login?token={tokens['owner']}")
    assert viewer.status_code == 303 and viewer.headers["location"] == "/results"


def test_a_pair_is_shown_blind_with_its_sides_at_random_and_the_right_images(job, tmp_path,
                                                                               asgi):
    arena, app, tokens = open_round(job, tmp_path, raters=["alice"])
    call = asgi(app)
    lefts = Counter()
    for _ in range(arena.runs.total_pairs()):
        shown = call("GET", "/api/next", tokens["alice"]).json()
        text = json.dumps(shown)
        assert not any(r in text for r in arena.runs.ids), "run ids must not reach the rater"
        assert "tiny-sd" not in text and "ddim" not in text
        ticket = arena.store.ticket(shown["ticket"])
        assert shown["prompt"] == f"prompt number {int(ticket.prompt_id)}"
        for side, run in (("left", ticket.left_run), ("right", ticket.right_run)):
            png = call("GET", shown["images"][side], tokens["alice"])
            assert png.headers["content-type"] == "image/png"
            assert png.content == arena.runs.image(run, (ticket.prompt_id, ticket.sample_idx))
        lefts[ticket.left_run == ticket.run_a] += 1
        assert call("POST", "/api/vote", tokens["alice"], json={
            "ticket": ticket.ticket, "question": "overall", "answer": "tie"}).status_code == 200
    assert 9 <= lefts[True] <= 27, lefts  # 36 pairs, each side first about half the time
    # another rater's ticket is not yours
    other = arena.store.issue("rounds", "bob", ("0000", 0, "run-0", "run-1"), "run-0")
    assert call("GET", f"/api/image/{other.ticket}/left", tokens["alice"]).status_code == 404


def test_a_vote_is_stored_with_rater_pair_sides_answer_and_time_and_only_once(job, tmp_path,
                                                                             asgi):
    arena, app, tokens = open_round(job, tmp_path)
    call = asgi(app)
    before = now()
    shown = call("GET", "/api/next", tokens["bob"]).json()
    body = {"ticket": shown["ticket"], "question": "overall", "answer": "right"}
    first = call("POST", "/api/vote", tokens["bob"], json=body)
    assert first.status_code == 200 and first.json()["new"] is True
    again = call("POST", "/api/vote", tokens["bob"], json=body)  # a retried request
    assert again.status_code == 200 and again.json() == {"vote_id": first.json()["vote_id"],
                                                         "new": False}
    changed = call("POST", "/api/vote", tokens["bob"], json={**body, "answer": "left"})
    assert changed.status_code == 409 and "already answered `right`" in changed.text
    [vote] = arena.store.votes("rounds")
    ticket = arena.store.ticket(shown["ticket"])
    assert (vote["rater"], vote["prompt_id"], vote["sample_idx"], vote["left_run"],
            vote["right_run"], vote["answer"]) == ("bob", ticket.prompt_id, ticket.sample_idx,
                                                   ticket.left_run, ticket.right_run, "right")
    assert before <= vote["issued_at"] <= vote["voted_at"] <= now()
    for bad, field in (({**body, "answer": "up"}, "answer"),
                       ({**body, "question": "looks"}, "question"),
                       ({"ticket": shown["ticket"]}, "question")):
        answer = call("POST", "/api/vote", tokens["bob"], json=bad)
        assert answer.status_code == 400 and answer.json()["detail"].startswith(field), answer.text
    stolen = call("POST", "/api/vote", tokens["alice"], json=body)
    assert stolen.status_code == 404
    assert len(arena.store.votes("rounds")) == 1


def test_a_rater_never_sees_a_pair_twice_unless_asked(job, tmp_path, asgi):
    arena, app, tokens = open_round(job, tmp_path, raters=["alice"])
    call = asgi(app)
    pairs = []
    while not (shown := call("GET", "/api/next", tokens["alice"]).json())["done"]:
        ticket = arena.store.ticket(shown["ticket"])
        pairs.append(ticket.pair)
        call("POST", "/api/vote", tokens["alice"], json={
            "ticket": ticket.ticket, "question": "overall", "answer": "left"})
    assert len(pairs) == len(set(pairs)) == arena.runs.total_pairs() == 36
    assert shown["progress"] == {"votes": 36, "left": 0, "total": 36}
    # a reload before answering shows the same pair again, with the same sides: not a new one
    arena.store.add_raters("rounds", ["carol"])
    carol = {n: t for n, (_, t) in arena.tokens().items()}["carol"]
    first, reload = (call("GET", "/api/next", carol).json() for _ in range(2))
    assert first["ticket"] == reload["ticket"]
    # asked for repeats: once every pair was shown, pairs come again
    _, again, tokens = open_round(job, tmp_path, raters=["alice"], repeats=True)
    shown = asgi(again)("GET", "/api/next", tokens["alice"]).json()
    assert not shown["done"] and arena.store.ticket(shown["ticket"]).showing == 1


def test_a_second_question_set_is_asked_of_every_pair(job, tmp_path, asgi):
    arena, app, tokens = open_round(job, tmp_path, questions=TWO)
    call = asgi(app)
    shown = call("GET", "/api/next", tokens["alice"]).json()
    assert [q["id"] for q in shown["questions"]] == ["prompt", "looks"]
    vote = {"ticket": shown["ticket"], "question": "prompt", "answer": "left"}
    assert call("POST", "/api/vote", tokens["alice"], json=vote).status_code == 200
    pending = call("GET", "/api/next", tokens["alice"]).json()
    assert pending["ticket"] == shown["ticket"] and pending["answered"] == {"prompt": "left"}
    call("POST", "/api/vote", tokens["alice"], json={**vote, "question": "looks",
                                                     "answer": "both_bad"})
    assert call("GET", "/api/next", tokens["alice"]).json()["ticket"] != shown["ticket"]
    results = call("GET", "/api/results", tokens["owner"]).json()
    assert [q["question"] for q in results["questions"]] == ["prompt", "looks"]
    assert [q["votes"] for q in results["questions"]] == [1, 1]


@pytest.mark.slow  # over ten seconds: the full tier runs it
def test_twenty_concurrent_raters_cast_2000_votes_none_lost_or_duplicated(make_job, tmp_path):
    job = make_job(tmp_path, runs=4, prompts=6, per_prompt=3)  # 6 x 18 = 108 pairs a rater
    raters = [f"rater{i:02d}" for i in range(20)]
    arena, app, tokens = open_round(job, tmp_path, raters=raters)
    acknowledged = vote_concurrently(app, tokens, raters, 100)
    check_once(arena.store.votes("rounds"), acknowledged, raters, 100)


def _vote(store, rater: str, pair: tuple, left: str, answer: str) -> None:
    ticket = store.issue("rounds", rater, pair, left)
    store.vote(ticket, "overall", answer)


def test_the_active_design_asks_about_the_uncertain_pair_and_balances_prompts(job, tmp_path,
                                                                              asgi):
    arena, app, tokens = open_round(job, tmp_path, raters=["seed", "new"])
    store = arena.store
    keys = arena.runs.shared("run-0", "run-1")
    # run-0 beat run-1 and run-2 every time; run-1 against run-2 is a coin toss so far
    for i, (p, s) in enumerate(keys):
        _vote(store, "seed", (p, s, "run-0", "run-1"), "run-0", "left")
        _vote(store, "seed", (p, s, "run-0", "run-2"), "run-2", "right")
        _vote(store, "seed", (p, s, "run-1", "run-2"), "run-1", ["left", "right"][i % 2])
    call = asgi(app)
    chosen, prompts = [], Counter()
    for _ in range(12):
        shown = call("GET", "/api/next", tokens["new"]).json()
        ticket = store.ticket(shown["ticket"])
        chosen.append((ticket.run_a, ticket.run_b))
        prompts[ticket.prompt_id] += 1
        call("POST", "/api/vote", tokens["new"], json={
            "ticket": ticket.ticket, "question": "overall", "answer": "tie"})
    assert Counter(chosen)[("run-1", "run-2")] >= 9, chosen  # uniform would give about 4
    assert max(prompts.values()) - min(prompts.values()) <= 1, prompts  # balanced: 2 each


def test_the_results_page_shows_rankings_agreement_and_position_check(job, tmp_path, asgi):
    arena, app, tokens = open_round(job, tmp_path)
    store = arena.store
    for rater in ("alice", "bob"):
        for a, b in arena.runs.run_pairs():
            for p, s in arena.runs.shared(a, b):
                winner = min(a, b)  # run-0 > run-1 > run-2, both raters agree
                left = a if (int(p) + s) % 2 else b
                answer = "left" if left == winner else "right"
                _vote(store, rater, (p, s, a, b), left, "tie" if int(p) == 5 else answer)
    call = asgi(app)
    page = call("GET", "/results", tokens["owner"])
    assert page.status_code == 200
    for text in ("tiny-sd-ddim-s1-g5.0", "Krippendorff", "Win rates", "no position bias"):
        assert text in page.text, text
    data = call("GET", "/api/results", tokens["owner"]).json()
    [overall] = data["questions"]
    assert [s["run"] for s in overall["strengths"]] == ["run-0", "run-1", "run-2"]
    assert overall["alpha"]["value"] == pytest.approx(1.0)
    assert overall["position"]["flagged"] is False
    assert overall["win_rate"][0][1] == pytest.approx(11 / 12)  # a tie counts a half


def test_images_decode_and_the_rating_page_carries_its_keys(job, tmp_path, asgi):
    arena, app, tokens = open_round(job, tmp_path)
    call = asgi(app)
    page = call("GET", "/", tokens["alice"]).text
    for key in ('"ArrowLeft": "left"', '"ArrowRight": "right"', '"1": "left"', "both_bad"):
        assert key in page
    shown = call("GET", "/api/next", tokens["alice"]).json()
    png = call("GET", shown["images"]["left"], tokens["alice"]).content
    assert Image.open(io.BytesIO(png)).size == (16, 16)
