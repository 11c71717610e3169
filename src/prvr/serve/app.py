"""HTTP API and web page over an index: /search, /videos/{id}, /videos/{id}/file, /health, / (the page).

Bad input never gives a 500: empty or over-long queries, k out of range and unknown ids are 4xx with a
one-line `detail`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse

from prvr.errors import PrvrError
from prvr.index.search import MAX_K, MAX_QUERY_CHARS, Retriever


def create_app(index: str | Path | Retriever, device: str = "cpu") -> FastAPI:
    retriever = index if isinstance(index, Retriever) else Retriever(index, device)
    app = FastAPI(title="prvr", description="Partially relevant video retrieval over an index of your videos.",
                  version="0.1.0")
    page = resources.files("prvr.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "videos": len(retriever), "text_search": bool(retriever.manifest.get("text_encoder"))}

    @app.get("/search")
    def search(q: str = Query(..., description="free-text query"),
               k: int = Query(10, ge=1, le=MAX_K, description="number of results")) -> dict:
        if not q.strip():
            raise HTTPException(400, "empty query")
        if len(q) > MAX_QUERY_CHARS:
            raise HTTPException(400, f"query of {len(q)} characters, expected at most {MAX_QUERY_CHARS}")
        try:
            hits = retriever.search(q, k)
        except PrvrError as e:
            raise HTTPException(400, str(e)) from None
        return {"query": q, "k": k, "hits": [{**h.to_dict(), "has_file": _file_of(retriever, h.video_id) is not None}
                                             for h in hits]}

    @app.get("/videos/{video_id}")
    def video(video_id: str) -> dict:
        try:
            meta = retriever.video(video_id)
        except PrvrError as e:
            raise HTTPException(404, str(e)) from None
        meta = {k: v for k, v in meta.items() if k not in ("frame_times", "file")}
        return {**meta, "has_file": _file_of(retriever, video_id) is not None}

    @app.get("/videos/{video_id}/file", include_in_schema=False)
    def video_file(video_id: str):
        path = _file_of(retriever, video_id)
        if path is None:
            raise HTTPException(404, f"no video file for {video_id!r}")
        return FileResponse(path)

    return app


def _file_of(retriever: Retriever, video_id: str) -> Path | None:
    try:
        f = retriever.video(video_id).get("file")
    except PrvrError:
        return None
    return Path(f) if f and Path(f).is_file() else None


def serve(index: str | Path | Retriever, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    import uvicorn

    uvicorn.run(create_app(index, device), host=host, port=port, log_level="info")
