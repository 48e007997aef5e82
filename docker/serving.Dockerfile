# The Freehold serving image: Ray Serve + llama.cpp (CPU build) + embeddings.
# Build from the repository root:  docker build -f docker/serving.Dockerfile -t freehold-serving .
# scripts/images builds both images with buildah on a Debian base made with debootstrap
# (no Docker Hub needed) and pushes them to an OCI registry by digest.
# For NVIDIA GPUs build with CMAKE_ARGS="-DGGML_CUDA=on" on a CUDA base image instead.
# The heavy part is PyTorch (CPU build, ~700 MB installed): the embeddings model
# (sentence-transformers) runs on it. Any Debian bookworm with python3 and python3-venv works.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# The dependencies, alone in their stage and in the image's largest layer: a change of
# Freehold's own code ships a layer of a few MB, not the dependencies again.
FROM ${PYTHON_IMAGE} AS deps
# Build-time only (these stages are thrown away): a CA bundle for a TLS-inspecting proxy,
# and where the CPU build of torch comes from (its hash is in the lock either way):
# PyTorch's CPU index by default, or `--find-links DIR` where a local copy is mounted.
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
# llama-cpp-python is built from its sdist (several minutes on 2 cores). pip's download
# cache outlives the build (a BuildKit/buildah cache mount, never in the image).
RUN --mount=type=cache,target=/root/.cache/pip,id=freehold-pip \
    python3 -m venv /opt/freehold \
    && /opt/freehold/bin/pip install --require-hashes ${TORCH_SOURCE} \
         -r requirements/serving.lock \
    && /opt/freehold/bin/pip uninstall -y pip setuptools wheel

FROM deps AS build
# Build tools in a venv of their own, not shipped: pip (the dependencies' venv has none
# left) and the CycloneDX SBOM tool.
RUN python3 -m venv /opt/tools && /opt/tools/bin/pip install --no-cache-dir "cyclonedx-bom==7.5.0"
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY serving ./serving
# Freehold itself, beside the dependencies (PYTHONPATH), run by the dependencies' python.
RUN /opt/tools/bin/pip --python /opt/freehold/bin/python install --no-cache-dir --no-deps \
      --target /opt/freehold-app .
# A CycloneDX SBOM of the image's Python environment, shipped inside the image.
RUN PYTHONPATH=/opt/freehold-app /opt/tools/bin/cyclonedx-py environment \
      --pyproject pyproject.toml --output-reproducible --of JSON -o /sbom.cdx.json \
      /opt/freehold/bin/python

FROM ${PYTHON_IMAGE}
# libgomp: llama.cpp's OpenMP runtime. No compilers in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=deps /opt/freehold /opt/freehold
COPY --from=build /opt/freehold-app /opt/freehold-app
COPY --from=build /sbom.cdx.json /opt/freehold/share/freehold/sbom.cdx.json
USER 1000:1000
# Offline by design: weights come from the image, a volume, a registry or a Python package.
ENV PATH=/opt/freehold-app/bin:/opt/freehold/bin:$PATH PYTHONPATH=/opt/freehold-app \
    PYTHONUNBUFFERED=1 HOME=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0
EXPOSE 8000
ENTRYPOINT ["freehold"]
CMD ["serve"]
