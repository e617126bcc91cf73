"""Request bodies: capped while they arrive, and read as JSON with a reason for every way they are not.

A cap on Content-Length alone lets a chunked body (no length) stream in whole before anyone looks
at it. `BodyCap` wraps the whole app (the API and the gradio page) and counts the bytes as the
server hands them over; past the cap it answers 413 and stops keeping what arrives, so memory holds
at most the cap. uvicorn stops reading the socket while a request's body is not consumed, so the rest
is never buffered.

Closing a socket with unread bytes makes the kernel reset the connection and drop whatever of the
answer it has not sent yet, so a client still sending would see a reset instead of the 413. The
refusal therefore lingers: it reads and throws away the body for up to `LINGER_S` after answering,
until the client, which has its answer, stops or goes away.
"""

from __future__ import annotations

import asyncio
import json
import sys

from pydantic import BaseModel, ValidationError

from deepmolm.serve.asking import Refused

MAX_JSON_DEPTH = 8  # the API's bodies are flat objects of strings
LINGER_S = 2.0  # how long a refused body is still read (and dropped) after the 413


class BodyCap:
    """ASGI middleware: a request body over `limit` bytes gets 413 `{"error": ...}`, chunked or not."""

    def __init__(self, app, limit: int, describe_limit: str):
        self.app, self.limit, self.describe_limit = app, limit, describe_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, receive, f"the request has {int(declared)} bytes, over {self.describe_limit}")
        # Read the body here, within the cap, then hand it to the app as it came.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message]), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                chunks.clear()
                return await self._refuse(send, receive if more else None, f"the request's body passed {self.limit} "
                                          f"bytes while it streamed in, over {self.describe_limit}")
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                      receive), send)

    @staticmethod
    async def _refuse(send, receive, message: str) -> None:
        """The 413; with `receive` (a body still arriving), the whole answer goes out first and the
        response ends only after the linger, so the server does not close on unread bytes."""
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": receive is not None})
        if receive is not None:
            try:
                await asyncio.wait_for(_drop_rest(receive), LINGER_S)
            except TimeoutError:
                pass
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _drop_rest(receive) -> None:
    while (message := await receive())["type"] == "http.request" and message.get("more_body", False):
        pass


def _replay(messages: list[dict], then=None):
    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()  # after the body: the disconnect, when it comes
        return {"type": "http.disconnect"}
    return receive


def read_json(body: bytes, content_type: str | None, model: type[BaseModel]) -> BaseModel:
    """The body as `model`, or a Refused that says which of content type, encoding, syntax, depth or
    fields was wrong."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Refused(f"the body's content type is {media or 'not given'}; send application/json", 415)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"the body is not UTF-8: byte 0x{body[exc.start]:02x} at position {exc.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(f"malformed request: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:  # the parser recurses once per level
        raise Refused(f"the JSON nests more than {sys.getrecursionlimit()} levels deep, over {MAX_JSON_DEPTH}") from None
    depth = nesting_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise Refused(f"the JSON nests {depth} levels deep, over {MAX_JSON_DEPTH}")
    if not isinstance(data, dict):
        raise Refused(f"malformed request: the body is a JSON {type(data).__name__}, not an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise Refused(f"malformed request: {reasons}") from None


def nesting_depth(value) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:  # not recursive: a body may nest as deep as the parser allows
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
