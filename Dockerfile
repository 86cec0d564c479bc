# Spann3R streaming service: `spann3r serve` on an official PyTorch CUDA runtime, with the browser client.
# Weights are never baked in: mount them at /weights (SPANN3R_WEIGHTS=/weights/spann3r.pth) or fetch them at
# start from the Hugging Face Hub (SPANN3R_WEIGHTS=hf:OWNER/REPO/FILE, cached in /cache).
#   docker build -t spann3r-service .
#   docker compose -f docker/compose.yaml up            (one GPU)      docker/compose.cpu.yaml (CPU)

ARG PYTORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# ---- browser client: client_js/ → server/page (package data of spann3r.server)
FROM node:20-bookworm-slim AS client
WORKDIR /src/client_js
COPY client_js/package.json client_js/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY client_js/ ./
RUN mkdir -p /src/server && npm run build

# ---- service
FROM ${PYTORCH_IMAGE} AS service
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    SPANN3R_HOST=0.0.0.0 \
    SPANN3R_PORT=8000 \
    SPANN3R_DEVICE=cuda \
    SPANN3R_WEIGHTS=/weights/spann3r.pth \
    SPANN3R_STATE_DIR=/state
WORKDIR /app
# the base image's torch satisfies the requirement; pip keeps it and adds the rest
COPY pyproject.toml README.md ./
COPY spann3r/ spann3r/
COPY core/ core/
COPY server/ server/
COPY client_py/ client_py/
COPY cli/ cli/
COPY --from=client /src/server/page server/page
# EXTRAS=server,cluster adds Ray (docker/compose.cluster.yaml, deploy/kuberay/): docker build --build-arg EXTRAS=...
ARG EXTRAS=server
# DL3013 asks to pin registry packages; this installs the project itself (its dependencies are ranges by design)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${EXTRAS}]" \
    && python -m spann3r.core.pose_kernel \
    && useradd --create-home --uid 10001 spann3r \
    && mkdir -p /state /weights /cache \
    && chown spann3r:spann3r /state /cache
USER 10001
EXPOSE 8000
VOLUME ["/state", "/cache"]
# ready = model loaded and worker alive; the full-size model takes a while to load on first start
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["spann3r", "serve"]
