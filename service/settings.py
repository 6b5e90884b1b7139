"""Service configuration: one validated `Settings`, from SEQSERVE_* environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import UserError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEQSERVE_", extra="forbid", protected_namespaces=())

    model_repository: Path = Path("model_repository")
    models: list[str] = Field(default_factory=list, description="subset of models to load (default: all)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535, description="also serve OIP v2 over gRPC on this port "
                                  "(0: any free port; default: off)")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads per session (0: onnxruntime "
                                  "decides, one per core; measured faster than 1 even for small models)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_spinning: bool = Field(False, description="let onnxruntime's idle pool threads spin-wait (faster "
                                    "back-to-back runs, but they take CPU from request handling; measured slower)")
    gil_switch_interval_us: float = Field(50.0, gt=0, le=100_000, description="how long a Python thread may hold "
                                          "the GIL while another waits (Python's default: 5000); short, so the "
                                          "compute thread's Python work does not hold up the event loop")

    max_batch_size: int = Field(64, ge=1, le=4096)
    max_queue_delay_ms: float = Field(0.0, ge=0, le=10_000, description="wait this long for a fuller batch when "
                                      "the model is idle (0: go at once; batches still form while it is busy)")
    max_queue_size: int = Field(1024, ge=1, description="texts waiting per model before 503")
    retry_after_s: int = Field(1, ge=1)
    default_timeout_s: float = Field(0, ge=0, description="per-request deadline when none is given (0: none)")

    scheduler: Literal["continuous", "static", "none"] = "continuous"
    max_active_rows: int = Field(256, ge=1, description="step rows in flight per decoding model (translator, LM)")
    max_active_source_tokens: int = Field(16_384, ge=1, description="source or prompt tokens in flight per "
                                          "decoding model")
    default_beam_size: int = Field(4, ge=1)
    max_beam_size: int = Field(16, ge=1)
    max_output_tokens: int = Field(256, ge=1)
    no_shortlist: list[str] = Field(default_factory=list, description="translators decoded over the whole "
                                    "vocabulary even though they ship a lexical shortlist")

    response_cache_entries: int = Field(10_000, ge=0, description="answers the exact-match response cache holds "
                                        "(keyed on model, version, text and options; 0: no cache)")
    response_cache_mb: float = Field(64.0, ge=0, description="bound on the response cache's memory (0: no cache)")

    max_texts_per_request: int = Field(256, ge=1, description="texts per request, and sentences once a "
                                       "translator has split its texts")
    max_chars_per_text: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request headers, names and values together, "
                                  "before 431")
    max_headers: int = Field(100, ge=8, description="request header lines before 431")
    body_timeout_s: float = Field(60.0, gt=0, description="longest time a request body may take to arrive, "
                                  "from its first byte, before 408")
    header_timeout_s: float = Field(10.0, gt=0, description="longest time a request's line and headers may take "
                                    "to arrive, from their first byte, before 408 and a closed connection")
    max_connections: int | None = Field(None, ge=1, description="open connections before a request gets 503 "
                                        "with Retry-After (default: what the open-file limit leaves room for)")
    idle_timeout_s: float = Field(5.0, gt=0, description="a connection with no request under way (new, or after "
                                  "a response) is closed after this")

    drain_timeout_s: float = Field(30.0, ge=0, description="bound on finishing in-flight work at shutdown")
    api_key: str | None = Field(None, description="required for inference endpoints when set")
    control_api_key: str | None = Field(None, description="required for model control; enables it")
    enable_model_control: bool = Field(False, description="allow load/unload without a control key")
    cors_origins: list[str] = Field(default_factory=list)
    log_texts: bool = Field(False, description="debug: include request texts in logs")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object a line (time, level, "
                                                "logger, message, request id; model, version, status and latency "
                                                "on access lines)")
    access_log: bool = Field(False, description="log a line per request at info level (otherwise at debug only)")
    otlp_endpoint: str | None = Field(None, description="export OpenTelemetry traces to this OTLP endpoint "
                                      "(default: $OTEL_EXPORTER_OTLP_ENDPOINT; neither set: tracing off)")
    otlp_protocol: Literal["http/protobuf", "grpc"] | None = Field(None, description="the OTLP transport (default: "
                                                                   "$OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="share of traces recorded when the client sent "
                                      "no sampling decision (parent-based: a sampled traceparent is always followed)")

    @model_validator(mode="after")
    def _beams(self) -> Settings:
        if self.default_beam_size > self.max_beam_size:
            raise ValueError("default_beam_size must not exceed max_beam_size")
        return self

    @property
    def model_control_enabled(self) -> bool:
        return self.enable_model_control or bool(self.control_api_key)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit overrides; a bad value names the setting."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise UserError(f"invalid setting {name} (SEQSERVE_{name.upper()}): {first['msg']}") from None
