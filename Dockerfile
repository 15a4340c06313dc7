# segflow prediction server: the HTTP API and web page over one model bundle.
#
#   docker build -t segflow-serve .
#   docker run --rm -p 9009:9009 -v "$PWD/model.segflow:/model:ro" segflow-serve
#   curl -F image=@photo.png http://127.0.0.1:9009/predict -o mask.png
#
# The bundle folder is mounted read-only at /model (export it to ONNX first for the fastest CPU
# serving: `segflow export model.segflow --format onnx`). Open http://127.0.0.1:9009/ for the web
# page, /docs for the API. Any `segflow serve` flag can be given by replacing the command, e.g.
#   docker run --rm -p 9009:9009 -v "$PWD/model.segflow:/model:ro" segflow-serve \
#       segflow serve /model --host 0.0.0.0 --max-upload-mb 50 --workers 2
# An API key comes from the environment (not the command line, which `ps` shows):
#   docker run --rm -p 9009:9009 -e SEGFLOW_API_KEY=s3cret -v "$PWD/model.segflow:/model:ro" segflow-serve
#
# GPU image (PyTorch CUDA wheels on a CUDA base; the torch backend runs on the GPU):
#   docker build -t segflow-serve:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 \
#       --build-arg BACKEND=torch .
#   docker run --rm --gpus all -p 9009:9009 -v "$PWD/model.segflow:/model:ro" segflow-serve:cuda

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# CPU-only PyTorch wheels by default (the CUDA ones are ~3 GB larger).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# auto: onnxruntime when the bundle has model.onnx, else torch; torch for the GPU image.
ARG BACKEND=auto

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    SEGFLOW_BACKEND=${BACKEND} \
    PATH=/opt/venv/bin:${PATH}

# CUDA base images have no Python: install the distribution's (3.10 on Ubuntu 22.04).
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip setuptools wheel \
    && pip install --index-url "${TORCH_INDEX}" torch torchvision

WORKDIR /opt/segflow
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install ".[serve]" && rm -rf /opt/segflow/build

RUN useradd --create-home --uid 10001 segflow
USER segflow
WORKDIR /home/segflow

EXPOSE 9009
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9009/health', timeout=4)"
CMD ["segflow", "serve", "/model", "--host", "0.0.0.0"]
