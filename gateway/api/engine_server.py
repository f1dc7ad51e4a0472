"""``flywheel engine local``: the embedded engine behind the same HTTP API as ``vllm serve``.

With it a machine without a GPU runs the whole multi-replica topology: one or more gateways
with FLYWHEEL_ENGINE=vllm in front of several of these processes.  The surface mirrors vLLM
started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, quirks included:

* ``/v1/chat/completions``, ``/v1/completions``: OpenAI shapes, streaming or not,
  ``stream_options.include_usage`` honoured (usage on a last event with no choices).
* ``/v1/load_lora_adapter``: 200 with a plain-text body; 400 when the name is already loaded,
  the rank is above ``--max-lora-rank``, or the adapter uses DoRA / modules_to_save (vLLM's
  messages); 404 when there is no adapter at the path.  ``/v1/unload_lora_adapter``: 200 text,
  404 for an unknown name.  Errors are ``{"error": {message, type, param, code: int}}``.
* ``/v1/models``: the base, then one card per loaded adapter with ``parent`` = the base name
  and ``root`` = its path.  ``/health``: 200, empty.
* Loaded adapters stay listed however many there are; the engine keeps ``max_loras`` of them in
  memory and reloads the others from disk on use, as vLLM does with ``--max-cpu-loras``.

It does not verify adapter signatures, and neither does vLLM: the gateway runs its Verifier
before it asks any replica to load an adapter.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from gateway.api.errors import validation_error
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.openai.responses import ModelCard, ModelList, Shape, Usage
from gateway.core.errors import FlywheelError
from gateway.engine.base import AdapterRef, GenerationChunk, GenerationRequest
from gateway.engine.capabilities import EMBEDDED_LOCAL
from gateway.engine.embedded import EmbeddedEngine

DEFAULT_MAX_TOKENS = 256


class _LoadBody(BaseModel):
    lora_name: str = ""
    lora_path: str = ""


class _UnloadBody(BaseModel):
    lora_name: str = ""


def vllm_error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """vLLM's error envelope (>= 0.10): the HTTP status repeated as an integer ``code``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def adapter_problems(path: Path, max_lora_rank: int) -> list[str]:
    """What vLLM's PEFTHelper refuses in an adapter_config.json, in its words."""
    config = json.loads((path / "adapter_config.json").read_text())
    problems = []
    if config.get("modules_to_save"):
        problems.append("vLLM only supports modules_to_save being None.")
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    rank = int(config.get("r", 0))
    if rank > max_lora_rank:
        problems.append(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    return problems


class LocalServer:
    """The routes' logic; one per process, around one EmbeddedEngine."""

    def __init__(
        self, engine: EmbeddedEngine, *, base_name: str, base_root: str, max_lora_rank: int
    ) -> None:
        self.engine = engine
        self.base_name = base_name
        self.base_root = base_root
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, AdapterRef] = {}  # what /v1/models lists, in load order
        self._loads = 0

    def models(self) -> ModelList:
        created = int(time.time())
        base = ModelCard(
            id=self.base_name,
            object="model",
            created=created,
            owned_by="vllm",
            root=self.base_root,
            parent=None,
            max_model_len=self.engine.max_model_len,
        )
        loras = [
            ModelCard(
                id=name,
                object="model",
                created=created,
                owned_by="vllm",
                root=str(ref.path),
                parent=self.base_name,
            )
            for name, ref in self.adapters.items()
        ]
        return ModelList(object="list", data=[base, *loras])

    async def load(self, body: _LoadBody) -> Response:
        name, path = body.lora_name, body.lora_path
        if not name or not path:
            return vllm_error(
                400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        if name in self.adapters:
            return vllm_error(
                400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput"
            )
        if not (Path(path) / "adapter_config.json").is_file():
            return vllm_error(
                404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError"
            )
        problems = adapter_problems(Path(path), self.max_lora_rank)
        if problems:
            return vllm_error(400, " ".join(problems), "BadRequestError")
        # Inside the engine each load gets a name of its own, so loading a name again (after
        # an unload) from another path can never find the old weights still resident.
        self._loads += 1
        ref = AdapterRef(f"{name}@{self._loads}", Path(path), version_id=name)
        try:
            # Like vLLM's add_lora, a load checks the weights against the base and preloads.
            await self.engine.load_adapter(ref)
        except Exception as exc:
            return vllm_error(400, f"Loading lora {name} failed: {exc}", "BadRequestError")
        self.adapters[name] = ref
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, body: _UnloadBody) -> Response:
        name = body.lora_name
        if not name:
            return vllm_error(
                400,
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                "InvalidUserInput",
            )
        ref = self.adapters.pop(name, None)
        if ref is None:
            return vllm_error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        await self.engine.unload_adapter(ref.engine_name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def complete(self, raw: Request, chat: bool) -> Response:
        try:
            payload = await raw.json()
            body: ChatCompletionRequest | CompletionRequest = (
                ChatCompletionRequest.model_validate(payload)
                if chat
                else CompletionRequest.model_validate(payload)
            )
        except ValidationError as exc:
            invalid = validation_error(exc)  # vLLM names the field too, in ``param``
            return vllm_error(400, invalid.message, "BadRequestError", invalid.param)
        except ValueError as exc:  # not JSON
            return vllm_error(400, str(exc), "BadRequestError")
        if body.model != self.base_name and body.model not in self.adapters:
            return vllm_error(
                404, f"The model `{body.model}` does not exist.", "NotFoundError", "model"
            )
        try:
            # vLLM would honour more fields than the embedded engine underneath: those are
            # refused here by name, and the gateway in front relays the 400 with its param.
            body.check(EMBEDDED_LOCAL)
            request = GenerationRequest(
                request_id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                adapter=self.adapters.get(body.model),
                sampling=body.sampling(DEFAULT_MAX_TOKENS),
                messages=body.engine_messages()
                if isinstance(body, ChatCompletionRequest)
                else None,
                prompt=body.prompt_text() if isinstance(body, CompletionRequest) else None,
            )
            stream = self.engine.generate(request)
            # Awaited before answering, so a bad request is a 400 rather than a broken stream.
            first = await anext(stream)
        except FlywheelError as exc:
            kind = "BadRequestError" if exc.status_code == 400 else "InternalServerError"
            return vllm_error(exc.status_code, exc.message, kind, exc.param)
        shape = Shape(request.request_id, body.model, int(time.time()), chat=chat, openai=False)
        if body.stream:
            events = _sse(
                shape,
                first,
                stream,
                include_usage=body.include_usage,
                continuous=body.continuous_usage,
            )
            return StreamingResponse(events, media_type="text/event-stream")
        chunks = [first]
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                chunks.append(chunk)
        text, last = "".join(c.text for c in chunks), chunks[-1]
        full = shape.full(text, last.finish_reason, _usage(last))
        return Response(full.dump(), media_type="application/json")


async def _sse(
    shape: Shape,
    first: GenerationChunk,
    stream: AsyncGenerator[GenerationChunk, None],
    *,
    include_usage: bool,
    continuous: bool = False,
) -> AsyncIterator[str]:
    """Events the way vLLM writes them: the finish rides on the last text chunk."""
    async with contextlib.aclosing(stream):
        if shape.chat:
            yield shape.event("", role=True)
        chunk: GenerationChunk | None = first
        try:
            while chunk is not None:
                if chunk.text or chunk.finish_reason:
                    usage = _usage(chunk) if continuous else None
                    yield shape.event(chunk.text, chunk.finish_reason, usage=usage)
                if chunk.finish_reason is not None:
                    if include_usage:
                        yield shape.usage_event(_usage(chunk))
                    break
                chunk = await anext(stream, None)
        except FlywheelError as exc:
            error = {"message": exc.message, "type": "InternalServerError", "code": 500}
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"


def _usage(chunk: GenerationChunk) -> Usage:
    return Usage.of(chunk.prompt_tokens, chunk.completion_tokens)


def create_local_app(
    engine: EmbeddedEngine,
    *,
    base_name: str,
    base_root: str,
    max_lora_rank: int = 64,
    runtime_lora: bool = True,
    api_key: str | None = None,
) -> FastAPI:
    """The app; ``runtime_lora=False`` behaves like vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING."""
    server = LocalServer(
        engine, base_name=base_name, base_root=base_root, max_lora_rank=max_lora_rank
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="flywheel engine local", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return vllm_error(400, str(exc.errors()[:1]), "BadRequestError")

    if api_key:

        @app.middleware("http")
        async def _auth(request: Request, call_next: Any) -> Response:
            # vLLM's --api-key guards /v1/* only, and answers this exact body.
            expected = f"Bearer {api_key}"
            if (
                request.url.path.startswith("/v1")
                and request.headers.get("authorization") != expected
            ):
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            response: Response = await call_next(request)
            return response

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> Response:
        return Response(server.models().dump(), media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat(raw: Request) -> Response:
        return await server.complete(raw, chat=True)

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Response:
        return await server.complete(raw, chat=False)

    if runtime_lora:

        @app.post("/v1/load_lora_adapter")
        async def load(body: _LoadBody) -> Response:
            return await server.load(body)

        @app.post("/v1/unload_lora_adapter")
        async def unload(body: _UnloadBody) -> Response:
            return await server.unload(body)

    return app
