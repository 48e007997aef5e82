# The Freehold serving image: Ray Serve + llama.cpp (CPU build) + embeddings.
# Build from the repository root:  docker build -f docker/serving.Dockerfile -t freehold-serving .
# scripts/images builds both images with buildah on a Debian base made with debootstrap
# (no Docker Hub needed) and pushes them to an OCI registry by digest.
# For NVIDIA GPUs build with CMAKE_ARGS="-DGGML_CUDA=on" on a CUDA base image instead.
# The heavy part is PyTorch (CPU build, ~700 MB installed): the embeddings model
# (sentence-transformers) runs on it. Any Debian bookworm with python3 and python3-venv works.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Build-time only (this stage is thrown away): a CA bundle for a TLS-inspecting proxy, and
# where the CPU build of torch comes from (its hash is in the lock either way): PyTorch's
# CPU index by default, or `--find-links DIR` where a local copy of the wheel is mounted.
ARG PIP_CERT=""
ARG SSL_CERT_FILE=""
ARG TORCH_SOURCE="--extra-index-url https://download.pytorch.org/whl/cpu"
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/serving.lock requirements/
# llama.cpp for a portable CPU (no -march=native: the image runs on other hosts).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# Every dependency pinned and checked against its hash (scripts/lock makes the lock);
# llama-cpp-python is built from its sdist (several minutes on 2 cores).
# pip's cache outlives the build (a BuildKit/buildah cache mount, never in the image), so a
# changed lock does not rebuild what was built before (llama.cpp takes minutes).
RUN --mount=type=cache,target=/root/.cache/pip,id=freehold-pip \
    python3 -m venv /opt/freehold \
    && /opt/freehold/bin/pip install --require-hashes ${TORCH_SOURCE} \
         -r requirements/serving.lock
# A CycloneDX SBOM tool in a venv of its own: it is not shipped.
RUN python3 -m venv /opt/sbom && /opt/sbom/bin/pip install --no-cache-dir "cyclonedx-bom==7.5.0"
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY serving ./serving
RUN /opt/freehold/bin/pip install --no-cache-dir --no-deps . \
    && /opt/freehold/bin/pip uninstall -y pip setuptools wheel
# A CycloneDX SBOM of the image's Python environment, shipped inside the image.
RUN mkdir -p /opt/freehold/share/freehold \
    && /opt/sbom/bin/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
         --of JSON -o /opt/freehold/share/freehold/sbom.cdx.json /opt/freehold/bin/python

FROM ${PYTHON_IMAGE}
# libgomp: llama.cpp's OpenMP runtime. No compilers in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=build /opt/freehold /opt/freehold
USER 1000:1000
# Offline by design: weights come from the image, a volume, a registry or a Python package.
ENV PATH=/opt/freehold/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
EXPOSE 8000
ENTRYPOINT ["freehold"]
CMD ["serve"]
