"""Open Inference Protocol v2 (REST), with Triton's binary tensor and model repository extensions."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr

from service.api.body import body_doc, deadline_from, is_json, json_response, media_type, parse_json
from service.api.deps import ManagerDep, reach, require_control_key, require_inference_key
from service.api.errors import RESPONSES, UnsupportedMedia
from service.api.kind import FastRoute
from service.api.kinds import API_KINDS
from service.api.schemas import V2InferRequest, V2InferResponse, V2Tensor
from service.serving.inference import InvalidInput, Receive, check_texts, run_texts
from service.serving.served import ServedModel
from service.settings import Settings

try:
    SERVER_VERSION = version("seqserve")
except PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0"

router = APIRouter(prefix="/v2", tags=["v2"], responses=RESPONSES)
ModelName = Annotated[str, Path(description="model name", max_length=64)]
Version = Annotated[int, Path(description="model version", ge=1)]


SERVER_METADATA: dict[str, Any] = {"name": "seqserve", "version": SERVER_VERSION,
                                   "extensions": ["binary_tensor_data", "model_repository"]}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return SERVER_METADATA


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: start-up done and at least one model serving")
async def ready(request: Request, manager: ManagerDep) -> JSONResponse:
    is_ready = bool(getattr(request.app.state, "started", False)) and manager.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def metadata(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "versions": [str(model.version)], "platform": "onnxruntime_onnx",
            "inputs": model.v2_inputs(),
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape} for o in model.v2_outputs()],
            "parameters": {"kind": model.kind, "execution_provider": model.provider}}


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: ModelName, manager: ManagerDep) -> dict[str, Any]:
    return metadata(manager.get(name))


@router.get("/models/{name}/versions/{number}", summary="Model version metadata")
async def model_version_metadata(name: ModelName, number: Version, manager: ManagerDep) -> dict[str, Any]:
    return metadata(manager.get(name, number))


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: ModelName, manager: ManagerDep) -> dict[str, Any]:
    model = manager.get(name)
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/versions/{number}/ready", summary="Model version readiness")
async def model_version_ready(name: ModelName, number: Version, manager: ManagerDep) -> dict[str, Any]:
    model = manager.get(name, number)
    return {"name": model.name, "version": str(model.version), "ready": True}


INFER_DOC = body_doc(V2InferRequest, **{"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"},
    "description": "Triton binary tensor extension (Inference-Header-Content-Length)"}})
INFER_PATH = "/v2/models/{name}/infer"
INFER_VERSION_PATH = "/v2/models/{name}/versions/{number}/infer"


async def infer(request: Request) -> Response:
    """v2 inference on a model (the path names it, and perhaps its version); every kind takes text in."""
    await require_inference_key(request)
    raw = await request.body()  # first: the model is looked up once the body is in, so a reload loses nothing
    name, number = request.path_params["name"], request.path_params.get("number")
    settings: Settings = request.app.state.settings
    model = reach(request, name, None if number is None else int(number))
    body = parse_infer_request(request, raw)
    shaped, wanted = await answer(model, body, settings, lambda timeout_s: deadline_from(request, settings, timeout_s),
                                  request.receive)
    binary = _binary_outputs(body, wanted)
    return _binary_response(shaped, binary) if binary else json_response(shaped)


async def answer(model: ServedModel, body: V2InferRequest, settings: Settings,
                 deadline_of: Callable[[float | None], float | None],
                 receive: Receive) -> tuple[dict[str, Any], list[str]]:
    """A v2 infer request's answer (the response body, outputs in the order asked) and the output names, whatever
    carried it (REST or gRPC). `deadline_of(parameters.timeout in seconds or None)` is the request's deadline."""
    texts = check_texts(texts_of(body), settings)
    params = body.parameters or {}
    known = {o.name: o for o in model.v2_outputs()}
    wanted = [o.name for o in body.outputs] if body.outputs else None
    unknown = [n for n in wanted or () if n not in known]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; model {model.name!r} has {sorted(known)}")
    if wanted is not None and len(set(wanted)) != len(wanted):
        raise InvalidInput("outputs: each output may be asked for once; an output was listed more than once")
    deadline = deadline_of(_timeout_s(params))
    options = API_KINDS[model.kind].v2_options(params, settings)
    produced = model.v2_output_names(options)
    other = [n for n in wanted or () if n not in produced]
    if other:  # e.g. a language model's scores asked for with parameters.task = complete
        raise InvalidInput(f"output(s) {other} do not come with these parameters; they give {produced}")
    wanted = wanted or produced
    results = await run_texts(model, texts, options, deadline, receive, log_texts=settings.log_texts)
    tensors = model.v2_tensors(results)
    outputs = [{"name": n, "datatype": known[n].datatype, "shape": tensors[n][1], "data": tensors[n][0]}
               for n in wanted]
    response = {"model_name": model.name, "model_version": str(model.version), "id": body.id, "outputs": outputs}
    return V2InferResponse.model_validate(response).model_dump(mode="json", exclude_none=True), wanted


def _binary_outputs(body: V2InferRequest, wanted: list[str]) -> set[str]:
    """Outputs to send in Triton's binary tensor format: those whose `binary_data` parameter is true, or all
    (unless an output says false) when the request's `binary_data_output` is, as tritonclient sends by default."""
    default = (body.parameters or {}).get("binary_data_output") is True
    asked = {o.name: (o.parameters or {}).get("binary_data") for o in body.outputs or []}
    return {name for name in wanted if asked.get(name) is True or (default and asked.get(name) is not False)}


def _binary_response(shaped: dict[str, Any], binary: set[str]) -> Response:
    """A JSON header of Inference-Header-Content-Length bytes, then each binary output's raw data in order."""
    blobs, outputs = [], []
    for output in shaped["outputs"]:
        if output["name"] in binary:
            blob = pack(output["datatype"], output.pop("data"))
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(blob)}
            blobs.append(blob)
        outputs.append(output)
    header = json.dumps({**shaped, "outputs": outputs}, separators=(",", ":")).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def pack(datatype: str, data: list[Any]) -> bytes:
    """BYTES as 4-byte little-endian lengths and UTF-8; numbers as little-endian arrays of their type."""
    if datatype == "BYTES":
        encoded = [str(item).encode("utf-8") for item in data]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    return np.asarray(data, dtype=NUMPY_TYPES[datatype]).tobytes()


NUMPY_TYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}


def _timeout_s(params: dict[str, Any]) -> float | None:
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise InvalidInput("parameters.timeout must be a number of microseconds")
    try:
        return float(timeout) / 1e6
    except OverflowError:
        raise InvalidInput("parameters.timeout is too large") from None


async def _infer_route(name: ModelName, request: Request) -> Response:
    return await infer(request)


async def _infer_version_route(name: ModelName, number: Version, request: Request) -> Response:
    return await infer(request)


BINARY_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}},
    "description": "JSON, or with binary outputs (binary_data) Triton's binary tensor format"}}
router.add_api_route("/models/{name}/infer", _infer_route, methods=["POST"], response_model=V2InferResponse,
                     summary="Inference", openapi_extra=INFER_DOC, responses=BINARY_ANSWER)
router.add_api_route("/models/{name}/versions/{number}/infer", _infer_version_route, methods=["POST"],
                     response_model=V2InferResponse, summary="Inference on a version", openapi_extra=INFER_DOC,
                     responses=BINARY_ANSWER)

V2_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<number>[^/]+))?/infer")


def plain(params: dict[str, Any]) -> bool:
    """Path parameters the framework route accepts as they are (`ModelName`, `Version`)."""
    number = params.get("number")
    return len(params["name"]) <= 64 and (number is None or (number.isascii() and number.isdigit()
                                                             and int(number) >= 1))


FAST = (FastRoute(INFER_PATH, infer, re.compile(r"/v2/models/(?P<name>[^/]+)/infer"), plain),
        FastRoute(INFER_VERSION_PATH, infer, re.compile(r"/v2/models/(?P<name>[^/]+)/versions/(?P<number>[^/]+)/infer"),
                  plain))


def texts_of(body: V2InferRequest) -> list[str]:
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


def parse_infer_request(request: Request, raw: bytes) -> V2InferRequest:
    """JSON, or Triton's binary extension: a JSON header of Inference-Header-Content-Length bytes, then tensors."""
    header_length = request.headers.get("inference-header-content-length")
    if header_length is None and not is_json(media_type(request)):
        raise UnsupportedMedia(f"Content-Type {media_type(request)!r} is not accepted; send application/json")
    split = len(raw)
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(raw):
            raise InvalidInput("Inference-Header-Content-Length must be a byte count within the body")
        split = int(header_length)
    body = parse_json(raw[:split], V2InferRequest)
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
        tensor.data = unpack_bytes(blob[offset:offset + size], tensor.name)
        offset += size


def unpack_bytes(chunk: bytes, name: str) -> list[str]:
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


@router.post("/repository/index", dependencies=[Depends(require_control_key)], summary="Repository index",
             tags=["model control"])
async def repository_index(manager: ManagerDep) -> list[dict[str, Any]]:
    return manager.index()


class LoadParameters(BaseModel):
    version: StrictInt | StrictStr | None = Field(None, description="the version to load (default: the latest)")


class LoadRequest(BaseModel):
    parameters: LoadParameters | None = None


@router.post("/repository/models/{name}/load", dependencies=[Depends(require_control_key)],
             summary="Load (or reload) a model's latest version, or parameters.version", tags=["model control"],
             openapi_extra={"requestBody": {"required": False, **body_doc(LoadRequest)["requestBody"]}})
async def load_model(name: ModelName, request: Request, manager: ManagerDep) -> dict[str, Any]:
    raw = await request.body()
    params = parse_json(raw, LoadRequest).parameters if raw.strip() else None
    number = None if params is None else params.version
    if number is not None and not (str(number).isascii() and str(number).isdigit() and int(number) >= 1):
        raise InvalidInput("parameters.version must be a positive integer")
    model = await manager.load(name, None if number is None else int(number))
    return {"name": model.name, "version": str(model.version), "state": "READY"}


@router.post("/repository/models/{name}/unload", dependencies=[Depends(require_control_key)],
             summary="Unload a model (in-flight requests finish)", tags=["model control"])
async def unload_model(name: ModelName, manager: ManagerDep) -> dict[str, Any]:
    await manager.unload(name)
    return {"name": name, "state": "UNAVAILABLE"}
