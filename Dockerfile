# syntax=docker/dockerfile:1
# One image for every part of fraudstream: the worker, the analyst API and the command line.
#   docker build -t fraudstream:0.1.0 .
#   docker run --rm fraudstream:0.1.0 --help
#   docker run --rm -e FRAUD_KAFKA_BOOTSTRAP=... -e FRAUD_REDIS_URL=... fraudstream:0.1.0 worker
# The build stage compiles any wheel that has no binary for this platform; the final stage gets
# only the virtualenv, so no compiler or header ever reaches it.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/fraudstream
ENV PATH=/opt/fraudstream/bin:$PATH
WORKDIR /src
# Dependencies first (a layer that changes only with pyproject.toml), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p models processor api replay \
    && touch models/__init__.py processor/__init__.py api/__init__.py replay/__init__.py \
    && pip install --no-compile . \
    && pip uninstall -y fraudstream
COPY models ./models
COPY processor ./processor
COPY api ./api
COPY replay ./replay
RUN pip install --no-deps . \
    && python -m compileall -q /opt/fraudstream/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fraudstream" \
      org.opencontainers.image.description="Real-time fraud detection stream processor" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/fraudstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FRAUD_LOG_JSON=true \
    FRAUD_API_HOST=0.0.0.0 \
    FRAUD_API_PORT=8000
RUN groupadd --system --gid 10001 fraudstream \
    && useradd --system --uid 10001 --gid fraudstream --home-dir /var/lib/fraudstream \
       --create-home --shell /usr/sbin/nologin fraudstream
COPY --from=build /opt/fraudstream /opt/fraudstream
# The worker keeps its Faust data directory (<group>-data) in the working directory.
WORKDIR /var/lib/fraudstream
USER 10001:10001
EXPOSE 8000 9102
# The API answers /healthz on FRAUD_API_PORT; the worker serves /metrics on FRAUD_METRICS_PORT.
# Whichever of the two this container runs must answer. (Kubernetes uses its own probes.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u\nfor port, path in ((os.environ.get('FRAUD_API_PORT', '8000'), 'healthz'), (os.environ.get('FRAUD_METRICS_PORT', '9102'), 'healthz')):\n    try:\n        u.urlopen(f'http://127.0.0.1:{port}/{path}', timeout=3)\n        sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)"]
ENTRYPOINT ["fraudstream"]
CMD ["--help"]
