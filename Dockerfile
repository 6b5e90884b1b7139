# syntax=docker/dockerfile:1
# seqserve serving image: onnxruntime on CPU, no torch. See docs/deploy.md.
#   docker build -t seqserve .
#   docker run -p 8000:8000 -v "$PWD/model_repository:/models:ro" seqserve
# PYTHON_IMAGE lets a build without registry access use a local Python 3.11 image (deploy/test-container.sh).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# PIP_* build args (PIP_CERT, PIP_INDEX_URL, ...) reach pip here only, never the runtime image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
RUN python3 -m venv /opt/seqserve && /opt/seqserve/bin/pip install --upgrade pip setuptools wheel
COPY pyproject.toml setup.py README.md constraints-serve.txt ./
COPY service ./service
COPY cli ./cli
COPY bench ./bench
# Only the serving extra: no torch, no training code in the image.
RUN /opt/seqserve/bin/pip install -c constraints-serve.txt ".[serve]" \
 && /opt/seqserve/bin/pip uninstall -y pip setuptools wheel

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="seqserve" \
      org.opencontainers.image.description="Recurrent NLP models (classification, translation) on ONNX Runtime"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin seqserve
COPY --from=build /opt/seqserve /opt/seqserve
# The bundled models; mount a volume on /models to serve others.
COPY --chown=10001:10001 model_repository/ /models/
ENV PATH=/opt/seqserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEQSERVE_MODEL_REPOSITORY=/models \
    SEQSERVE_PORT=8000
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('SEQSERVE_PORT', '8000'), timeout=2)"]
# SIGTERM: stop accepting, drain in-flight work within SEQSERVE_DRAIN_TIMEOUT_S, exit 0.
STOPSIGNAL SIGTERM
CMD ["seqserve", "serve", "--host", "0.0.0.0"]
