"""Open Inference Protocol v2 over gRPC (KServe's GRPCInferenceService, with Triton's repository extension), on the
service's own event loop, beside REST: the same models, queues, limits, keys, deadlines, errors and metrics.

The service definition (`proto/grpc_predict_v2.proto`) is compiled at build time into a descriptor set, which is
loaded here into a private descriptor pool: the messages never clash with another copy of the same protocol in the
process (tritonclient's, in the tests), and no generated code is kept in the tree.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from pydantic import ValidationError

from service import tracing
from service.api import v2
from service.api.deps import Forbidden, Unauthorized, key_matches
from service.api.errors import STATUS, describe, internal_error
from service.api.middleware import REQUEST_ID_RE, new_request_id, request_id_var
from service.api.schemas import V2InferRequest
from service.metrics import Metrics
from service.serving.inference import InvalidInput
from service.serving.manager import ModelManager, ModelNotFound, ModelNotReady
from service.serving.served import ServedModel
from service.settings import Settings

log = logging.getLogger("seqserve.grpc")
access = logging.getLogger("seqserve.access")
SERVICE = "inference.GRPCInferenceService"
PROTO = Path(__file__).parent / "proto" / "grpc_predict_v2.proto"

# An HTTP status of the error table (service.api.errors.STATUS) -> the gRPC code, as Triton maps its errors.
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
         422: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.INVALID_ARGUMENT,
         401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
         404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
         499: grpc.StatusCode.CANCELLED, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
         500: grpc.StatusCode.INTERNAL}


def descriptor_set() -> bytes:
    """The compiled service definition; compiled now when this is a source tree that was never built."""
    compiled = PROTO.with_suffix(".pb")
    if not compiled.exists():
        try:
            import grpc_tools
            from grpc_tools import protoc
        except ImportError:
            raise RuntimeError(f"{compiled} is missing: pip install the package, which compiles it") from None
        include = Path(grpc_tools.__file__).parent / "_proto"
        root = PROTO.parents[2]
        code = protoc.main(["protoc", f"-I{include}", f"-I{root}", f"--descriptor_set_out={compiled}", str(PROTO)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
    return compiled.read_bytes()


@cache
def messages() -> dict[str, Any]:
    """Message name -> class, from the descriptor set in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set()).file:
        pool.Add(file)
    service = pool.FindServiceByName(SERVICE)
    found = {}
    for method in service.methods:
        for message in (method.input_type, method.output_type):
            found[message.name] = message_factory.GetMessageClass(message)
    return found


def method_types() -> dict[str, tuple[Any, Any]]:
    """RPC name -> (request class, response class)."""
    pool_messages = messages()
    return {name: (pool_messages[f"{name}Request"], pool_messages[f"{name}Response"]) for name in RPCS}


RPCS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")


def parameter_value(param: Any) -> Any:
    """An InferParameter (or ModelRepositoryParameter) as the Python value REST's JSON would give."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def set_parameter(param: Any, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def _tensor_data(tensor: Any, raw: bytes | None) -> list[Any]:
    if raw is not None:
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {tensor.name!r} must have datatype BYTES, got {tensor.datatype!r}")
        return v2.unpack_bytes(raw, tensor.name)
    contents = tensor.contents
    if tensor.datatype == "BYTES":
        data = []
        for i, item in enumerate(contents.bytes_contents):
            try:
                data.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(f"input {tensor.name!r}: element {i} is not valid UTF-8") from None
        return data
    for field in ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents"):
        if len(getattr(contents, field)):
            return list(getattr(contents, field))
    return []


def infer_request(request: Any) -> V2InferRequest:
    """A ModelInferRequest as the REST body it stands for (validated the same way)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
               "parameters": {k: parameter_value(p) for k, p in t.parameters.items()} or None,
               "data": _tensor_data(t, raw[i] if raw else None)} for i, t in enumerate(request.inputs)]
    outputs = [{"name": o.name, "parameters": {k: parameter_value(p) for k, p in o.parameters.items()} or None}
               for o in request.outputs]
    body = {"id": request.id or None, "inputs": inputs, "outputs": outputs or None,
            "parameters": {k: parameter_value(p) for k, p in request.parameters.items()} or None}
    try:
        return V2InferRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(describe(exc.errors())) from None


def _version(text: str) -> int | None:
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise InvalidInput(f"model version must be a positive integer, got {text!r}")
    return int(text)


def _never() -> Awaitable[Any]:
    """The `receive` of a gRPC call: it never reports a disconnect; a cancelled call cancels its task instead."""
    return asyncio.get_running_loop().create_future()


Handler = Callable[[Any, grpc.aio.ServicerContext, dict[str, Any]], Awaitable[Any]]


class InferenceService:
    """The RPCs, each behind one wrapper that does what the REST middleware does: request id (x-request-id
    metadata in and out), keys, the error table, metrics (endpoint `grpc:<method>`), the access log, a trace."""

    def __init__(self, settings: Settings, manager: ModelManager, metrics: Metrics,
                 is_started: Callable[[], bool]) -> None:
        self.settings, self.manager, self.metrics, self.is_started = settings, manager, metrics, is_started
        self.types = method_types()

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for name in RPCS:
            request_type, response_type = self.types[name]
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(name, getattr(self, f"_{name}")), request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _wrap(self, name: str, handler: Handler) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        endpoint, recorded = f"grpc:{name}", name.startswith("Model")

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = self._metadata(context)
            given = metadata.get("x-request-id", "")
            request_id = given if REQUEST_ID_RE.match(given) else new_request_id()
            token = request_id_var.set(request_id)
            state: dict[str, Any] = {"model": "", "version": ""}
            start, status = time.perf_counter(), 500
            try:
                with tracing.server_span(f"{SERVICE}/{name}", metadata, **{
                        "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name,
                        "seqserve.request_id": request_id}) as span:
                    try:
                        response = await handler(request, context, state)
                        status = 200
                        context.set_trailing_metadata((("x-request-id", request_id),))
                        return response
                    except asyncio.CancelledError:  # the client cancelled or its deadline passed: work dropped
                        remaining = context.time_remaining()
                        status = 504 if remaining is not None and remaining <= 0 else 499
                        raise
                    except Exception as exc:
                        status, message = self._status(exc)
                        trailing = [("x-request-id", request_id)]
                        if status == 503:
                            trailing.append(("retry-after", str(self.settings.retry_after_s)))
                        if span is not None:
                            span.set_attribute("rpc.grpc.status_code", CODES.get(status, grpc.StatusCode.INTERNAL)
                                               .value[0])
                        await context.abort(CODES.get(status, grpc.StatusCode.INTERNAL), message, tuple(trailing))
                    finally:
                        if span is not None and state["model"]:
                            span.set_attribute("seqserve.model", state["model"])
            finally:
                elapsed = time.perf_counter() - start
                if recorded:
                    self.metrics.requests.labels(state["model"], endpoint, str(status)).inc()
                    self.metrics.request_latency.labels(state["model"], endpoint).observe(elapsed)
                    if status == 503:
                        self.metrics.rejected_latency.labels(state["model"], endpoint).observe(elapsed)
                if access.isEnabledFor(logging.INFO):
                    access.info("%s %s %d %.1fms", "GRPC", endpoint, status, elapsed * 1000,
                                extra={"endpoint": endpoint, "method": "GRPC", "model": state["model"],
                                       "version": state["version"], "status": status,
                                       "latency_ms": round(elapsed * 1000, 3)})
                request_id_var.reset(token)

        return call

    def _status(self, exc: Exception) -> tuple[int, str]:
        status = next((code for cls, code in STATUS if isinstance(exc, cls)), None)
        if status is None:
            log.error("unhandled %s in a gRPC call: %s", type(exc).__name__, exc, exc_info=exc)
            return 500, internal_error(exc)
        return status, str(exc)

    # --- keys ---

    def _require_inference_key(self, context: grpc.aio.ServicerContext) -> None:
        if self.settings.api_key and not key_matches(self._metadata(context), self.settings.api_key):
            raise Unauthorized("missing or wrong API key (send metadata 'authorization: Bearer KEY' or "
                               "'x-api-key: KEY')")

    def _require_control_key(self, context: grpc.aio.ServicerContext) -> None:
        if not self.settings.model_control_enabled:
            raise Forbidden("model control is disabled; set SEQSERVE_CONTROL_API_KEY or SEQSERVE_ENABLE_MODEL_CONTROL")
        if self.settings.control_api_key and not key_matches(self._metadata(context), self.settings.control_api_key):
            raise Unauthorized("missing or wrong API key (send metadata 'authorization: Bearer KEY' or "
                               "'x-api-key: KEY')")

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
        return {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}

    def _reach(self, name: str, version: str, state: dict[str, Any]) -> ServedModel:
        model = self.manager.get(name, _version(version))
        state["model"], state["version"] = model.name, str(model.version)
        return model

    # --- the RPCs ---

    async def _ServerLive(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        return self.types["ServerLive"][1](live=True)

    async def _ServerReady(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        return self.types["ServerReady"][1](ready=self.is_started() and self.manager.ready)

    async def _ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        return self.types["ServerMetadata"][1](**v2.SERVER_METADATA)

    async def _ModelReady(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        try:  # as Triton answers: not ready (rather than an error) for a model it does not serve
            self._reach(request.name, request.version, state)
            ready = True
        except (ModelNotFound, ModelNotReady):
            ready = False
        return self.types["ModelReady"][1](ready=ready)

    async def _ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        meta = v2.metadata(self._reach(request.name, request.version, state))
        return self.types["ModelMetadata"][1](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=meta["inputs"], outputs=meta["outputs"])

    async def _ModelInfer(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        self._require_inference_key(context)
        model = self._reach(request.model_name, request.model_version, state)
        with tracing.span("parse"):
            body = infer_request(request)
        remaining = context.time_remaining()

        def deadline_of(timeout_s: float | None) -> float | None:
            if timeout_s is None and self.settings.default_timeout_s > 0 and remaining is None:
                timeout_s = self.settings.default_timeout_s
            if timeout_s is not None and not 0 < timeout_s < math.inf:
                raise InvalidInput("the timeout must be a positive, finite number")
            limits = [t for t in (timeout_s, remaining) if t is not None]
            return time.monotonic() + min(limits) if limits else None

        shaped, _ = await v2.answer(model, body, self.settings, deadline_of, _never)
        with tracing.span("response"):
            return self._infer_response(shaped)

    def _infer_response(self, shaped: dict[str, Any]) -> Any:
        response = self.types["ModelInfer"][1](model_name=shaped["model_name"],
                                               model_version=shaped["model_version"], id=shaped.get("id", ""))
        for output in shaped["outputs"]:
            # the data goes in raw_output_contents, in order, as Triton sends it
            response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
            response.raw_output_contents.append(v2.pack(output["datatype"], output["data"]))
        return response

    async def _RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext, state: dict[str, Any]) -> Any:
        self._require_control_key(context)
        rows = [r for r in self.manager.index() if not request.ready or r["state"] == "READY"]
        return self.types["RepositoryIndex"][1](models=rows)

    async def _RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext,
                                   state: dict[str, Any]) -> Any:
        self._require_control_key(context)
        params = {k: parameter_value(p) for k, p in request.parameters.items()}
        number = params.get("version")
        if number is not None and not (str(number).isascii() and str(number).isdigit() and int(number) >= 1):
            raise InvalidInput("parameters.version must be a positive integer")
        await self.manager.load(request.model_name, None if number is None else int(number))
        return self.types["RepositoryModelLoad"][1]()

    async def _RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext,
                                     state: dict[str, Any]) -> Any:
        self._require_control_key(context)
        await self.manager.unload(request.model_name)
        return self.types["RepositoryModelUnload"][1]()


class GrpcServer:
    """The gRPC server of one app: started once the models are loaded, stopped (in-flight calls finish within the
    drain bound) before they are closed."""

    def __init__(self, service: InferenceService, settings: Settings) -> None:
        self.service, self.settings = service, settings
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        options = [("grpc.max_receive_message_length", self.settings.max_body_bytes),
                   ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(handlers=[self.service.handler()], options=options)
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind the gRPC port {address}")
        await self.server.start()
        log.info("OIP v2 over gRPC on %s:%d", self.settings.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=self.settings.drain_timeout_s)
            self.server = None
