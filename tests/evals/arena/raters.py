"""Raters voting at once through the app in-process (one ASGI client, many coroutines)."""

from __future__ import annotations

import asyncio
import random

import httpx

ANSWERS = ["left", "right", "tie", "both_bad"]


def vote_concurrently(app, tokens: dict[str, str], raters: list[str],
                      votes_each: int) -> list[tuple[str, int]]:
    """Every rater casts `votes_each` votes at the same time as the others, every tenth sent
    twice (a retried request); returns (rater, vote_id) of each vote the app acknowledged."""
    acknowledged: list[tuple[str, int]] = []

    async def rate(client: httpx.AsyncClient, rater: str, rng: random.Random) -> None:
        headers = {"Authorization": f"Bearer {tokens[rater]}"}
        for n in range(votes_each):
            shown = (await client.get("/api/next", headers=headers)).json()
            body = {"ticket": shown["ticket"], "question": "overall",
                    "answer": rng.choice(ANSWERS)}
            for _ in range(2 if n % 10 == 0 else 1):
                answer = await client.post("/api/vote", headers=headers, json=body)
                assert answer.status_code == 200, answer.text
            acknowledged.append((rater, answer.json()["vote_id"]))

    async def everyone() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://arena",
                                     timeout=120) as client:
            await asyncio.gather(*(rate(client, r, random.Random(i))
                                   for i, r in enumerate(raters)))

    asyncio.run(everyone())
    return acknowledged


def check_once(votes: list[dict], acknowledged: list[tuple[str, int]], raters: list[str],
               votes_each: int) -> None:
    """Every acknowledged vote stored, none twice, each rater on distinct pairs."""
    assert len(votes) == len(acknowledged) == len(raters) * votes_each
    assert {(v["rater"], v["vote_id"]) for v in votes} == set(acknowledged)
    assert len({(v["ticket"], v["question"]) for v in votes}) == len(votes)
    for rater in raters:
        mine = [v for v in votes if v["rater"] == rater]
        pairs = {(v["prompt_id"], v["sample_idx"], *sorted((v["left_run"], v["right_run"])))
                 for v in mine}
        assert len(mine) == len(pairs) == votes_each, rater
