"""The arena's web app (FastAPI): log in with a token, rate pairs blind, read the results.

Every route needs a token (the `darkroom_arena` cookie set at login, or `Authorization: Bearer`);
without one it answers 401 (pages with the login form). Raters rate, viewers read the results;
the other role gets 403. A vote is answered 200 only once it is committed to the store.

    GET  /                  the rating page (a viewer is sent to /results)
    POST /login             form field `token`; GET /login?token=... for links; POST /logout
    GET  /api/next          the rater's next pair: prompt, image URLs, questions, progress
    POST /api/vote          {"ticket", "question", "answer": left | right | tie | both_bad}
    GET  /api/image/{ticket}/{left|right}
    GET  /results, /api/results    the round's results (viewers)
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from darkroom.evals.arena.pages import login_page, rating_page, results_page
from darkroom.evals.arena.rankings import as_dict
from darkroom.evals.arena.rounds import Round
from darkroom.evals.arena.store import Conflict

COOKIE = "darkroom_arena"
COOKIE_DAYS = 30
MAX_FORM_BYTES = 4096


class VoteRequest(BaseModel):
    """One answer to one question about the pair of a ticket."""

    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=64)
    answer: Literal["left", "right", "tie", "both_bad"]


class Denied(Exception):
    """No valid token (401) or the wrong role (403); pages answer with the login form."""

    def __init__(self, status: int, message: str, page: bool) -> None:
        super().__init__(message)
        self.status, self.page = status, page


class SecurityHeaders:
    """Adds headers to every response: never framed, no referrer (login links carry tokens),
    no content sniffing. Plain ASGI: Starlette's BaseHTTPMiddleware costs a task per request."""

    HEADERS = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
               (b"x-content-type-options", b"nosniff")]

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, sending)


def build_app(arena: Round) -> FastAPI:
    """The app of one round."""
    app = FastAPI(title="Darkroom arena", docs_url=None, redoc_url=None, openapi_url=None)
    questions = {q.id for q in arena.spec.questions}

    def caller(request: Request) -> tuple[str, str] | None:
        given = request.cookies.get(COOKIE) or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return arena.person(given) if given else None

    def need(request: Request, role: str, page: bool = False) -> str:
        who = caller(request)
        if who is None:
            raise Denied(401, "log in with your token", page)
        if who[1] != role:
            raise Denied(403, f"this needs a {role}'s token; yours is a {who[1]}'s", page)
        return who[0]

    def as_rater(request: Request) -> str:  # a dependency: checked before the body is read
        return need(request, "rater")

    @app.exception_handler(Denied)
    async def denied(_request: Request, err: Denied) -> Response:
        if err.page:
            return HTMLResponse(login_page(str(err)), status_code=err.status)
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, status_code=400)

    app.add_middleware(SecurityHeaders)

    def logged_in(given: str) -> Response:
        who = arena.person(given.strip()) if given.strip() else None
        if who is None:
            return HTMLResponse(login_page("That token is not valid for this round."), 401)
        response = RedirectResponse("/results" if who[1] == "viewer" else "/", status_code=303)
        response.set_cookie(COOKIE, given.strip(), max_age=COOKIE_DAYS * 86400, httponly=True,
                            samesite="strict")
        return response

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        who = caller(request)
        if who is not None and who[1] == "viewer":
            return RedirectResponse("/results", status_code=303)
        return HTMLResponse(rating_page(need(request, "rater", page=True)))

    @app.post("/login")
    async def login(request: Request) -> Response:
        body = (await request.body())[:MAX_FORM_BYTES].decode("utf-8", "replace")
        return logged_in((parse_qs(body).get("token") or [""])[0])

    @app.get("/login")
    def login_link(token: str = "") -> Response:
        return logged_in(token) if token else HTMLResponse(login_page())

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/api/next")
    def next_pair(request: Request) -> JSONResponse:
        rater = need(request, "rater")
        ticket, answered, progress = arena.next_ticket(rater)
        view = {"done": True} if ticket is None else arena.ticket_view(ticket, answered)
        return JSONResponse({**view, "progress": progress})

    @app.post("/api/vote")
    def vote(body: VoteRequest, rater: str = Depends(as_rater)) -> JSONResponse:
        ticket = arena.store.ticket(body.ticket)
        if ticket is None or ticket.rater != rater or ticket.round != arena.name:
            return JSONResponse({"detail": "ticket: no such pair was shown to you"}, 404)
        if body.question not in questions:
            return JSONResponse({"detail": f"question: `{body.question}` is not asked in this "
                                 f"round; ask one of {', '.join(sorted(questions))}"}, 400)
        try:
            stored, new = arena.store.vote(ticket, body.question, body.answer)
        except Conflict as err:
            return JSONResponse({"detail": str(err)}, 409)
        return JSONResponse({"vote_id": stored["vote_id"], "new": new})

    @app.get("/api/image/{ticket_id}/{side}")
    def image(request: Request, ticket_id: str, side: Literal["left", "right"]) -> Response:
        rater = need(request, "rater")
        ticket = arena.store.ticket(ticket_id)
        if ticket is None or ticket.rater != rater or ticket.round != arena.name:
            return JSONResponse({"detail": "ticket: no such pair was shown to you"}, 404)
        return Response(arena.image(ticket, side), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/results", response_class=HTMLResponse)
    def results(request: Request) -> HTMLResponse:
        need(request, "viewer", page=True)
        return HTMLResponse(results_page(arena.results()))

    @app.get("/api/results")
    def results_json(request: Request) -> dict:
        need(request, "viewer")
        return as_dict(arena.results())

    return app
