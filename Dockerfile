# syntax=docker/dockerfile:1
# The image every app service of docker-compose.yml runs (worker, beat, flower, exporter,
# cli): the package in a virtualenv, run as an unprivileged user. Build:
#   docker build -t partial-recovery-manager:dev .
# The base is pinned to an exact Python patch release on a fixed Debian release; pin it by
# digest too (`python:3.11.10-slim-bookworm@sha256:…`) where builds must be reproducible.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# -- build: install the package and its dependencies into /opt/venv ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY workers ./workers
# the [worker] extra: celery, flower, the CLI and the exporter (services need only the base)
RUN /opt/venv/bin/pip install '.[worker]'

# -- runtime: the virtualenv and the example config, nothing else -------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 recovery \
 && useradd --system --uid 10001 --gid recovery --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin recovery
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY config ./config
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# Generic check: Redis answers with this container's credentials (RECOVERY_REDIS_URL).
# docker-compose.yml overrides it per service: the worker pings its own Celery node, Flower
# and the exporter answer HTTP.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD recovery flags --json > /dev/null || exit 1
CMD ["recovery", "--help"]
