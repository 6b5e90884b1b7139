"""Runs the app under uvicorn; SIGTERM stops accepting, drains in-flight work within a bound, exits 0."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import uvicorn

from service.api.middleware import RequestIdFilter
from service.app import create_app
from service.protocol import guarded_protocol
from service.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("seqserve.access").setLevel("WARNING" if level == "info" else level.upper())


def tune_interpreter(settings: Settings) -> None:
    """The event loop and the compute threads share the GIL. A thread that gives it up for I/O waits up to the
    switch interval to get it back while another runs Python (the convoy effect); at Python's 5 ms that
    stalls the loop for the length of a batch's result building. Process-wide, so it is set here, not per app."""
    sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How the app is served: the connection limits of the settings, no uvicorn logging config."""
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]  # a float works
        timeout_keep_alive=settings.idle_timeout_s,  # type: ignore[arg-type]  # a float works
        http=guarded_protocol(settings.header_timeout_s, settings.max_header_bytes),
        limit_concurrency=None, lifespan="on",
    )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    tune_interpreter(settings)
    config = uvicorn_config(create_app(settings), settings)
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler found at start; this one
    # turns that into a clean exit 0 (a graceful stop is not a failure).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
