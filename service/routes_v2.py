"""Open Inference Protocol v2 (REST), with Triton's binary tensor and model repository extensions."""

from __future__ import annotations

import json
import struct
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.deps import ManagerDep, require_control_key, require_inference_key
from service.inference import InvalidInput, check_texts, deadline_from, run_texts
from service.metrics import Metrics
from service.routes_v1 import ERRORS, decode_options
from service.schemas import TranslateRequest, V2InferRequest, V2InferResponse, V2Tensor
from service.served import ServedModel, TranslateItem
from service.settings import Settings

try:
    SERVER_VERSION = version("seqserve")
except PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0"

router = APIRouter(prefix="/v2", tags=["v2"], responses=ERRORS)
ModelName = Annotated[str, Path(description="model name", max_length=64)]
Version = Annotated[int, Path(description="model version", ge=1)]


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "seqserve", "version": SERVER_VERSION,
            "extensions": ["binary_tensor_data", "model_repository"]}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: start-up done and at least one model serving")
async def ready(request: Request, manager: ManagerDep) -> JSONResponse:
    is_ready = bool(getattr(request.app.state, "started", False)) and manager.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _metadata(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "versions": [str(model.version)], "platform": "onnxruntime_onnx",
            "inputs": model.v2_inputs(),
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape} for o in model.v2_outputs()],
            "parameters": {"kind": model.kind, "execution_provider": model.provider}}


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: ModelName, manager: ManagerDep) -> dict[str, Any]:
    return _metadata(manager.get(name))


@router.get("/models/{name}/versions/{number}", summary="Model version metadata")
async def model_version_metadata(name: ModelName, number: Version, manager: ManagerDep) -> dict[str, Any]:
    return _metadata(manager.get(name, number))


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: ModelName, manager: ManagerDep) -> dict[str, Any]:
    model = manager.get(name)
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/versions/{number}/ready", summary="Model version readiness")
async def model_version_ready(name: ModelName, number: Version, manager: ManagerDep) -> dict[str, Any]:
    model = manager.get(name, number)
    return {"name": model.name, "version": str(model.version), "ready": True}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """The schema with its local $refs expanded, so it can stand alone inside the OpenAPI document."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_INFER_SCHEMA = V2InferRequest.model_json_schema()
INFER_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inline(_INFER_SCHEMA, _INFER_SCHEMA.get("$defs", {}))},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "Triton binary tensor extension (Inference-Header-Content-Length)"},
}}}


@router.post("/models/{name}/infer", response_model=V2InferResponse, response_model_exclude_none=True,
             dependencies=[Depends(require_inference_key)], summary="Inference", openapi_extra=INFER_DOC)
async def infer(name: ModelName, request: Request, manager: ManagerDep) -> dict[str, Any]:
    return await infer_body(request, manager.get(name))  # served by service.hotpath; declared for /docs


@router.post("/models/{name}/versions/{number}/infer", response_model=V2InferResponse,
             response_model_exclude_none=True, dependencies=[Depends(require_inference_key)],
             summary="Inference on a version", openapi_extra=INFER_DOC)
async def infer_version(name: ModelName, number: Version, request: Request,
                        manager: ManagerDep) -> dict[str, Any]:
    return await infer_body(request, manager.get(name, number))  # served by service.hotpath


async def infer_body(request: Request, model: ServedModel) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    request.state.model = model.name
    body = await parse_infer_request(request)
    texts = check_texts(_texts(body), settings)
    params = body.parameters or {}
    wanted = [o.name for o in body.outputs] if body.outputs else [o.name for o in model.v2_outputs()]
    known = {o.name: o for o in model.v2_outputs()}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; model {model.name!r} has {sorted(known)}")
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)):
        raise InvalidInput("parameters.timeout must be a number of microseconds")
    deadline = deadline_from(request, settings, None if timeout is None else float(timeout) / 1e6)
    payload = None if model.kind == "classifier" else _translate_payload(params, settings)
    results = await run_texts(request, model, texts, metrics, deadline, payload, log_texts=settings.log_texts)
    tensors = model.v2_tensors(results)
    outputs = [{"name": n, "datatype": known[n].datatype, "shape": tensors[n][1], "data": tensors[n][0]}
               for n in wanted]
    return {"model_name": model.name, "model_version": str(model.version), "id": body.id, "outputs": outputs}


def _translate_payload(params: dict[str, Any], settings: Settings) -> Any:
    """Decoding options from the v2 parameters beam_size, max_length and length_penalty (as in /v1/translate)."""
    given = {k: params[k] for k in ("beam_size", "max_length", "length_penalty") if k in params}
    try:
        request = TranslateRequest.model_validate({"texts": ["-"], **given}, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"parameters.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    options = decode_options(request, settings)
    return lambda ids: TranslateItem(ids, options)


def _texts(body: V2InferRequest) -> list[str]:
    if len(body.inputs) != 1 or body.inputs[0].name != "text":
        raise InvalidInput(f"expected one input named 'text', got {[i.name for i in body.inputs]}")
    tensor = body.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input 'text' must have datatype BYTES, got {tensor.datatype!r}")
    data = tensor.data or []
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInput(f"input 'text' must have shape [N] or [N, 1], got {tensor.shape}")
    if tensor.shape[0] != len(data) or tensor.shape[0] < 1:
        raise InvalidInput(f"input 'text' has shape {tensor.shape} but {len(data)} elements")
    if not all(isinstance(t, str) for t in data):
        raise InvalidInput("input 'text' elements must be strings")
    return list(data)


async def parse_infer_request(request: Request) -> V2InferRequest:
    """JSON, or Triton's binary extension: a JSON header of Inference-Header-Content-Length bytes, then tensors."""
    raw = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if header_length is None and content_type not in ("application/json", ""):
        raise UnsupportedMedia(f"Content-Type {content_type!r} is not accepted; send application/json")
    split = len(raw)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise InvalidInput("Inference-Header-Content-Length must be a byte count within the body")
        split = int(header_length)
    try:
        header = json.loads(raw[:split])
        body = V2InferRequest.model_validate(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    _attach_binary(body.inputs, raw[split:])
    return body


def _attach_binary(inputs: list[V2Tensor], blob: bytes) -> None:
    offset = 0
    for tensor in inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(blob):
            raise InvalidInput(f"input {tensor.name!r}: binary_data_size does not fit the body")
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {tensor.name!r} must have datatype BYTES, got {tensor.datatype!r}")
        tensor.data = _unpack_bytes(blob[offset:offset + size], tensor.name)
        offset += size


def _unpack_bytes(chunk: bytes, name: str) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes (UTF-8 here)."""
    items, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise InvalidInput(f"input {name!r}: truncated BYTES element")
        (n,) = struct.unpack_from("<I", chunk, at)
        if at + 4 + n > len(chunk):
            raise InvalidInput(f"input {name!r}: truncated BYTES element")
        try:
            items.append(chunk[at + 4:at + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: element {len(items)} is not valid UTF-8") from None
        at += 4 + n
    return items


class UnsupportedMedia(InvalidInput):
    """415."""


class MalformedBody(InvalidInput):
    """400."""


@router.post("/repository/index", dependencies=[Depends(require_control_key)], summary="Repository index",
             tags=["model control"])
async def repository_index(manager: ManagerDep) -> list[dict[str, Any]]:
    return manager.index()


@router.post("/repository/models/{name}/load", dependencies=[Depends(require_control_key)],
             summary="Load (or reload) a model's latest version, or parameters.version", tags=["model control"])
async def load_model(name: ModelName, manager: ManagerDep,
                     body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    number = ((body or {}).get("parameters") or {}).get("version")
    if number is not None and (not str(number).isdigit() or int(number) < 1):
        raise InvalidInput("parameters.version must be a positive integer")
    model = await manager.load(name, None if number is None else int(number))
    return {"name": model.name, "version": str(model.version), "state": "READY"}


@router.post("/repository/models/{name}/unload", dependencies=[Depends(require_control_key)],
             summary="Unload a model (in-flight requests finish)", tags=["model control"])
async def unload_model(name: ModelName, manager: ManagerDep) -> dict[str, Any]:
    await manager.unload(name)
    return {"name": name, "state": "UNAVAILABLE"}
