"""Runs the app under uvicorn; SIGTERM stops accepting, drains in-flight work within a bound, exits 0."""

from __future__ import annotations

import logging
import resource
import signal
import sys
from typing import Any

import uvicorn

from service.api.middleware import RequestIdFilter
from service.app import create_app
from service.protocol import guarded_protocol
from service.settings import Settings

log = logging.getLogger("seqserve.server")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def log_formatter(log_format: str) -> logging.Formatter:
    """Text (the default), or one JSON object a line: time, level, logger, message and request id, and on access
    lines endpoint, model, version, status and latency_ms (python-json-logger; request texts stay out, as in text)."""
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter("{levelname}{name}{message}{request_id}", style="{", timestamp="time",
                             rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False)
    return logging.Formatter(LOG_FORMAT)


def configure_logging(level: str, log_format: str = "text", access_log: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = level == "info" and not access_log  # a line per request costs throughput: asked for, or at debug
    logging.getLogger("seqserve.access").setLevel("WARNING" if quiet else level.upper())


def tune_interpreter(settings: Settings) -> None:
    """The event loop and the compute threads share the GIL. A thread that gives it up for I/O waits up to the
    switch interval to get it back while another runs Python (the convoy effect); at Python's 5 ms that
    stalls the loop for the length of a batch's result building. Process-wide, so it is set here, not per app."""
    sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)


FILES_IN_RESERVE = 128  # descriptors kept for model files, sessions, logs and the loop beside the connections


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (often 1,024 against 524,288: every
    connection is a file); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def connection_limit(settings: Settings, open_files: int) -> int:
    """SEQSERVE_MAX_CONNECTIONS, or as many as the open-file limit leaves room for."""
    room = max(1, open_files - FILES_IN_RESERVE)
    if settings.max_connections is None:
        return room
    if settings.max_connections > room:
        log.warning("max_connections=%d is more than the open-file limit (%d) leaves room for; using %d",
                    settings.max_connections, open_files, room)
    return min(settings.max_connections, room)


def uvicorn_config(app: Any, settings: Settings, open_files: int | None = None) -> uvicorn.Config:
    """How the app is served: the connection limits of the settings, no uvicorn logging config."""
    open_files = open_files if open_files is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    metrics = getattr(getattr(app, "state", None), "metrics", None)  # the service's, when app is create_app's
    refused = (lambda reason: metrics.connection_refusals.labels(reason).inc()) if metrics is not None else None
    limit = connection_limit(settings, open_files)
    log.info("open-file limit %d: up to %d connections", open_files, limit)
    protocol = guarded_protocol(settings.header_timeout_s, settings.max_header_bytes, limit, settings.retry_after_s,
                                refused)
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]  # a float works
        timeout_keep_alive=settings.idle_timeout_s,  # type: ignore[arg-type]  # a float works
        http=protocol, limit_concurrency=None, lifespan="on",
    )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    tune_interpreter(settings)
    open_files = raise_open_file_limit()
    config = uvicorn_config(create_app(settings), settings, open_files)
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler found at start; this one
    # turns that into a clean exit 0 (a graceful stop is not a failure).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
