"""The server: a FastAPI app with the JSON API under /api and the gradio page mounted at /.

Every refusal by the API is a 4xx (or 503 when busy or stopping) with `{"error": reason}`: a body
that is too large, of another content type, not UTF-8, not JSON, nested too deep or with unknown
fields, an unknown path or method included. The API and the page share one `Asker`, so their
answers take turns on the same model.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from deepmolm.config import Params
from deepmolm.inference import DEFAULT_PROMPT
from deepmolm.models.deepmolm.presets import model_summary
from deepmolm.serve.asking import Asker, Question, Refused
from deepmolm.serve.bodies import read_json
from deepmolm.serve.browse import ShardBrowser

BODY_SLACK_BYTES = 64 * 1024  # JSON around two base64 uploads


def largest_body(params: Params) -> int:
    """The most bytes a request may send: two base64 uploads of serve.max_upload_bytes and their JSON."""
    return 2 * (4 * params.serve.max_upload_bytes // 3 + 4) + BODY_SLACK_BYTES


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = DEFAULT_PROMPT
    smiles: str | None = None
    image: str | None = None  # base64 of a drawing, with `sdf`
    sdf: str | None = None  # base64 of an SDF: with `image`, or with `smiles` as its conformer
    task: str | None = None  # caption | property_qa; by default from the prompt


def _decoded(field: str, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{field} is not base64") from None


def create_app(asker: Asker, browser: ShardBrowser | None, params: Params) -> FastAPI:
    app = FastAPI(title="DeepMoLM", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"malformed request: {reasons}"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # 404, 405 and the like
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"}, status_code=exc.status_code,
                            headers=exc.headers)

    summary = model_summary(asker.predictor.model.config)

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "checkpoint": str(asker.predictor.checkpoint), "parameters": summary["total"],
                "image_size": summary["image_size"], "baseline_pool": len(asker.index) if asker.index else 0,
                "baseline_missing": asker.baseline_missing,
                "shards": browser.version.name if browser else None, "waiting": asker.waiting}

    @app.post("/api/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> dict:
        asked = read_json(await request.body(), request.headers.get("content-type"), PredictRequest)
        sdf = _decoded("sdf", asked.sdf)
        question = Question(prompt=asked.prompt, smiles=asked.smiles, image=_decoded("image", asked.image),
                            sdf=None if sdf is None else sdf.decode("utf-8", errors="replace"), task=asked.task)
        return (await run_in_threadpool(asker.ask, question)).as_json()

    def shards() -> ShardBrowser:
        if browser is None:
            raise Refused("no shard version is served: start the server with --shards DIR", 404)
        return browser

    @app.get("/api/molecules")
    def molecules(by: str = "words", q: str = "", page: int = 1) -> dict:
        found = shards().search(by, q, page).as_json()
        for row in found["molecules"]:
            row["image"] = f"/api/molecules/{row['cid']}/image.png"
        return found

    @app.get("/api/molecules/{cid}")
    def molecule(cid: int) -> dict:
        row = shards().molecule(cid)
        row.pop("image_png")
        return {**row, "image": f"/api/molecules/{cid}/image.png"}

    @app.get("/api/molecules/{cid}/image.png")
    def image(cid: int) -> Response:
        return Response(shards().drawing(cid), media_type="image/png")

    @app.get("/api/rejects")
    def rejects() -> dict:
        return {"shard_version": shards().version.name, "rejects": shards().rejects()}

    @app.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def unknown(request: Request, path: str) -> None:  # else the page, mounted at /, would answer in its own way
        allowed = sorted({method for route in app.routes if route.name != "unknown" and hasattr(route, "methods")
                          and route.path_regex.fullmatch(request.url.path) for method in route.methods})
        if allowed:
            raise Refused(f"{request.method} /api/{path}: use {', '.join(allowed)}", 405)
        raise Refused(f"no API endpoint /api/{path} (see /api/docs)", 404)

    return app
