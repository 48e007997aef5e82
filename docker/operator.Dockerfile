# The Freehold operator: control plane only (no serving engine, no torch).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t freehold-operator .
# scripts/images builds both images with buildah on a Debian base made with debootstrap
# (no Docker Hub needed) and pushes them to an OCI registry by digest.
# The base is pinned by exact version; pin it by digest too in your registry mirror
# (python:3.11.7-slim-bookworm@sha256:...) so rebuilds are reproducible. Any Debian
# bookworm with python3 and python3-venv works.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# The dependencies, alone in their stage and layer: a code change ships a small layer.
FROM ${PYTHON_IMAGE} AS deps
# Build-time only (these stages are thrown away): a CA bundle for a TLS-inspecting proxy.
ARG PIP_CERT=""
ARG SSL_CERT_FILE=""
WORKDIR /src
COPY requirements/operator.lock requirements/
# Every dependency pinned and checked against its hash (scripts/lock makes the lock).
# pip's download cache outlives the build (a BuildKit/buildah cache mount, never in the image).
RUN --mount=type=cache,target=/root/.cache/pip,id=freehold-pip \
    python3 -m venv /opt/freehold \
    && /opt/freehold/bin/pip install --require-hashes -r requirements/operator.lock \
    && /opt/freehold/bin/pip uninstall -y pip setuptools wheel

FROM deps AS build
# Build tools in a venv of their own, not shipped: pip and the CycloneDX SBOM tool.
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
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=deps /opt/freehold /opt/freehold
COPY --from=build /opt/freehold-app /opt/freehold-app
COPY --from=build /sbom.cdx.json /opt/freehold/share/freehold/sbom.cdx.json
USER 1000:1000
ENV PATH=/opt/freehold-app/bin:/opt/freehold/bin:$PATH PYTHONPATH=/opt/freehold-app \
    PYTHONUNBUFFERED=1 HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["freehold"]
CMD ["operator"]
