# syntax=docker/dockerfile:1
# nico-task-exporter: a wheel built in one stage, installed into a venv, copied into a slim runtime
# that runs as an unprivileged user. Build: docker build -t nico-task-exporter .

FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is made of (see .dockerignore); the README is the package's long description.
# constraints.txt pins every runtime dependency to the versions the tests ran with.
COPY pyproject.toml README.md constraints.txt ./
COPY exporter ./exporter
# The image can export traces over OTLP/HTTP and OTLP/gRPC (the grpc extra).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && for wheel in /wheels/*.whl; do \
         /opt/venv/bin/pip install --no-cache-dir -c constraints.txt "${wheel}[grpc]"; \
       done

FROM python:3.11.11-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="nico-task-exporter" \
      org.opencontainers.image.description="Prometheus metrics and OpenTelemetry traces for NVIDIA Infra Controller (NICo) tasks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.11-slim-bookworm"
# A fixed uid/gid (65532, distroless' "nonroot") so volume ownership is predictable.
RUN groupadd --system --gid 65532 nico \
    && useradd --system --uid 65532 --gid nico --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin nico \
    && mkdir -p /var/lib/nico-task-exporter /etc/nico-task-exporter \
    && chown nico:nico /var/lib/nico-task-exporter
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9842
# The state file (state.path: /var/lib/nico-task-exporter/state.db): exactly-once counting across restarts.
VOLUME ["/var/lib/nico-task-exporter"]
# Slim images have no curl: ask /healthz with the Python the exporter runs on. Assumes plain HTTP
# without basic auth on the default port; with a --web.config.file (TLS or basic auth protect
# /healthz too) or another --web.listen-address, override it (or rely on the orchestrator's probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9842/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["nico-task-exporter"]
CMD ["run", "--config.file", "/etc/nico-task-exporter/config.yaml"]
