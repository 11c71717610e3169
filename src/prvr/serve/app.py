"""HTTP API and web page over an index: /search, /videos/{id}, /videos/{id}/file, /health, / (the page), /docs.

What the server guarantees:
- Bad input never gives a 500: empty or over-long queries, k out of range and unknown ids are 4xx with a one-line
  `detail`; no error message carries an absolute path of the server.
- Files: only regular video files (extension and container signature) under the media roots (`--media-root`
  and the folders recorded in the index), symlinks resolved first; everything else is 404 (`MediaRoots`).
- The Host header must name the bound address (DNS rebinding), or one of `allowed_hosts`.
- Optional token auth (`token`): `Authorization: Bearer TOKEN`, or open `/?token=TOKEN` once in a browser
  (a same-site, HTTP-only cookie then carries it). /health stays open.
- Security headers on every answer (CSP with hashes of the page's own inline script and style, nosniff, no
  framing, no referrer); /docs is Swagger UI from local files (the pinned `fastapi-offline` package): no CDN.
- Concurrent searches are micro-batched by one worker (`QueryBatcher`); the text encoder is loaded once at start;
  torch runs `threads` intra-op threads; at most `max_pending` queries wait (then 503).
Routes live in `_routes`; a new one is added there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from prvr.errors import PrvrError
from prvr.index.search import MAX_K, MAX_QUERY_CHARS, Retriever
from prvr.index.store import THUMBS, thumb_key
from prvr.serve.batcher import Busy, QueryBatcher
from prvr.serve.media import MediaRoots

log = logging.getLogger("prvr.serve")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_COOKIE = "prvr_token"
MIN_TOKEN_CHARS = 16


@dataclass
class ServeSettings:
    """How `prvr serve` runs (each is a CLI option; see `prvr serve --help`)."""

    host: str = "127.0.0.1"  # the bound address: the default allowed Host
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names ("*": any)
    media_roots: list[Path] = field(default_factory=list)  # folders video files may be sent from
    index_media_roots: bool = True  # also the folders recorded in the index
    token: str | None = None  # required from clients when set
    threads: int = max(1, min(4, os.cpu_count() or 1))  # torch intra-op threads of the search worker
    max_batch: int = 32  # queries scored together
    max_pending: int = 256  # queries waiting before 503
    file_threads: int = 8  # threads sending video files


class ErrorDetail(BaseModel):
    detail: str


def _errors(*codes: int) -> dict:
    text = {400: "bad input (one-line detail)", 401: "missing or wrong token (when the server requires one)",
            404: "unknown video, or no file that may be sent", 503: "too many queries waiting; retry later"}
    return {c: {"model": ErrorDetail, "description": text[c]} for c in codes}


# ------------------------------------------------------------------------------------------------ messages
_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"(),;:/]+/)*([^\s'\"(),;:/]*)")


def public_message(text: str) -> str:
    """A message fit for a client: one line, every absolute path cut to its last component."""
    return " ".join(_ABS_PATH.sub(lambda m: m.group(1) or "(path)", str(text)).split())


# ------------------------------------------------------------------------------------------------ guard
def default_allowed_hosts(host: str) -> list[str] | None:
    """Host names a browser may use for the bound address; None: any (bound to all interfaces)."""
    h = host.strip("[]")
    if h in ("0.0.0.0", "::", ""):
        return None
    try:
        loop = ipaddress.ip_address(h).is_loopback
    except ValueError:
        loop = h == "localhost"
    return list(LOOPBACK_NAMES) if loop else [h]


def _host_of(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _csp(html: str, styles_inline: bool = False) -> str:
    """A CSP that allows exactly the page's own inline <script> and <style> blocks (by hash), nothing remote."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in blocks if b.strip())
    style = "'unsafe-inline'" if styles_inline else hashes("style")
    return (f"default-src 'self'; script-src 'self' {hashes('script')}; style-src 'self' {style}; "
            "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()")]


class Guard:
    """Pure ASGI middleware: Host check, token check, security headers (CSP per page)."""

    def __init__(self, app, allowed_hosts: list[str] | None, token: str | None, page_csp: dict[str, str]):
        self.app, self.token, self.page_csp = app, token, page_csp
        self.allowed = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower().strip("[]")
                                                                                    for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "")
        csp = self.page_csp.get(path, API_CSP)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                hs = [h for h in message.get("headers", []) if h[0].lower() != b"content-security-policy"]
                message["headers"] = hs + SECURITY_HEADERS + [(b"content-security-policy", csp.encode())]
            await send(message)

        if self.allowed is not None and _host_of(headers.get("host", "")) not in self.allowed:
            return await self._reply(send_with_headers, 400, "invalid Host header (the server accepts "
                                     "the address it is bound to; see --allowed-host)")
        if self.token is not None and path != "/health":
            given = _bearer(headers.get("authorization", "")) or _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if given is None and "token" in query and scope["method"] == "GET":
                if _same(query["token"], self.token):  # a browser's first visit: keep it in a cookie, drop it from the URL
                    rest = urlencode({k: v for k, v in query.items() if k != "token"})
                    resp = RedirectResponse(path + (f"?{rest}" if rest else ""), status_code=303)
                    resp.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                    return await resp(scope, receive, send_with_headers)
            if given is None or not _same(given, self.token):
                return await self._reply(send_with_headers, 401, "missing or wrong token (send Authorization: "
                                         "Bearer TOKEN, or open /?token=TOKEN once in the browser)",
                                         [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _reply(send, code: int, detail: str, extra=()):
        body = JSONResponse({"detail": detail}).body
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *extra]})
        await send({"type": "http.response.body", "body": body})


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# ------------------------------------------------------------------------------------------------ the app
class ServeState:
    """What the routes share: the retriever, the media roots, the batcher."""

    def __init__(self, retriever: Retriever, settings: ServeSettings):
        self.retriever, self.settings = retriever, settings
        recorded = retriever.manifest.get("media_roots", []) if settings.index_media_roots else []
        self.media = MediaRoots([*settings.media_roots, *recorded])
        if retriever.manifest.get("text_encoder"):
            retriever.text_encoder()  # loaded once, now, not by the first queries racing each other
        self.batcher = QueryBatcher(retriever.search_many, settings.max_batch, settings.max_pending, self._finish)

    def file_of(self, video_id: str) -> Path | None:
        try:
            return self.media.resolve(self.retriever.video(video_id).get("file"))
        except PrvrError:
            return None

    def thumb_of(self, video_id: str, frame: int | None) -> str | None:
        """The URL of a frame's thumbnail (a static file written by `prvr ingest`), when the index has one."""
        if frame is None or not self.retriever.video(video_id).get("thumbs"):
            return None
        return f"/{THUMBS}/{thumb_key(video_id)}/{int(frame)}.jpg"

    def _finish(self, hits, k: int) -> list[dict]:
        out = []
        for h in hits:
            d = {**h.to_dict(), "has_file": self.file_of(h.video_id) is not None,
                 "thumb": self.thumb_of(h.video_id, h.frame)}
            d["moments"] = [{**m, "thumb": self.thumb_of(h.video_id, m["frame"])} for m in d["moments"]]
            out.append(d)
        return out


def create_app(index: str | Path | Retriever, device: str = "cpu", settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    retriever = index if isinstance(index, Retriever) else Retriever(index, device)
    state = ServeState(retriever, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.file_threads  # file sends
        yield
        state.batcher.close()

    app = FastAPI(title="prvr", description="Partially relevant video retrieval over an index of your videos.",
                  version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.prvr = state
    page = resources.files("prvr.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    docs = _docs_page(app)
    _routes(app, state, page, docs)
    _error_handlers(app)
    # thumbnails: small JPEGs under INDEX/thumbs, served as static files (no symlinks followed, no listing)
    app.mount(f"/{THUMBS}", StaticFiles(directory=retriever.path / THUMBS, check_dir=False), name=THUMBS)

    allowed = default_allowed_hosts(settings.host)
    if allowed is not None or settings.allowed_hosts:
        allowed = [*(allowed or []), *settings.allowed_hosts] if "*" not in settings.allowed_hosts else None
    app.add_middleware(Guard, allowed_hosts=allowed, token=settings.token,
                       page_csp={"/": _csp(page), "/docs": _csp(docs, styles_inline=True)})
    return app


def _docs_page(app: FastAPI) -> str:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url=app.openapi_url, title="prvr API", swagger_js_url="/docs/swagger-ui-bundle.js",
                               swagger_css_url="/docs/swagger-ui.css", swagger_favicon_url="/docs/favicon.png"
                               ).body.decode()


DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


def _docs_asset(name: str) -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static" / name


def _routes(app: FastAPI, state: ServeState, page: str, docs: str) -> None:
    retriever = state.retriever

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> str:
        return page

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def api_docs() -> str:
        return docs

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        if name not in DOCS_ASSETS:
            raise HTTPException(404, "not found")
        return FileResponse(_docs_asset(name), media_type=DOCS_ASSETS[name])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "videos": len(retriever), "text_search": bool(retriever.manifest.get("text_encoder"))}

    @app.get("/search", responses=_errors(400, 401, 503))
    async def search(q: str = Query(..., description="free-text query", max_length=100_000),
                     k: int = Query(10, ge=1, le=MAX_K, description="number of results"),
                     path: str | None = Query(None, max_length=1000, description="only videos whose file path "
                                                                                "contains this")) -> dict:
        if not q.strip():
            raise HTTPException(400, "empty query")
        if len(q) > MAX_QUERY_CHARS:
            raise HTTPException(400, f"query of {len(q)} characters, expected at most {MAX_QUERY_CHARS}")
        try:
            hits = await asyncio.wrap_future(state.batcher.submit(q, k, path or None))
        except Busy as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        return {"query": q, "k": k, "path": path or None, "hits": hits}

    # ids made by `prvr ingest` are relative paths (`a/b.mp4`): `:path`; the file route is matched first
    @app.get("/videos/{video_id:path}/file", responses={200: {"description": "the video file (Range requests: 206)",
                                                             "content": {"video/*": {}}}, **_errors(401, 404)},
             response_class=FileResponse)
    async def video_file(video_id: str):
        path = state.file_of(video_id)
        if path is None:
            raise HTTPException(404, f"no video file for {video_id!r}")
        return FileResponse(path, media_type=state.media.media_type(path))

    @app.get("/videos/{video_id:path}", responses=_errors(401, 404))
    async def video(video_id: str) -> dict:
        try:
            meta = retriever.video(video_id)
        except PrvrError:
            raise HTTPException(404, f"unknown video id {video_id!r}") from None
        meta = {k: v for k, v in meta.items() if k not in ("frame_times", "file", "size", "mtime_ns")}
        return {**meta, "has_file": state.file_of(video_id) is not None}


def _error_handlers(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": public_message(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(PrvrError)
    async def user_error(request: Request, exc: PrvrError):
        return JSONResponse({"detail": public_message(str(exc))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": [{"loc": e.get("loc"), "msg": public_message(e.get("msg", ""))}
                                        for e in exc.errors()]}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)


def serve(index: str | Path | Retriever, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          settings: ServeSettings | None = None) -> None:
    import torch
    import uvicorn

    settings = settings or ServeSettings(host=host)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker is the parallelism; no tokenizer pool
    torch.set_num_threads(settings.threads)
    app = create_app(index, device, settings)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False,
                limit_concurrency=settings.max_pending + 64, timeout_keep_alive=5)
