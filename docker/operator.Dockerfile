# The Freehold operator: control plane only (no serving engine, no torch).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t freehold-operator .
# scripts/images builds both images with buildah on a Debian base made with debootstrap
# (no Docker Hub needed) and pushes them to an OCI registry by digest.
# The base is pinned by exact version; pin it by digest too in your registry mirror
# (python:3.11.7-slim-bookworm@sha256:...) so rebuilds are reproducible. Any Debian
# bookworm with python3 and python3-venv works (the `python` name is not needed).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Build-time only (this stage is thrown away): a CA bundle for a TLS-inspecting proxy.
ARG PIP_CERT=""
ARG SSL_CERT_FILE=""
WORKDIR /src
COPY requirements/operator.lock requirements/
# Every dependency pinned and checked against its hash (scripts/lock makes the lock).
# pip's cache outlives the build (a BuildKit/buildah cache mount, never in the image), so a
# changed lock does not rebuild what was built before (llama.cpp takes minutes).
RUN --mount=type=cache,target=/root/.cache/pip,id=freehold-pip \
    python3 -m venv /opt/freehold \
    && /opt/freehold/bin/pip install --require-hashes \
         -r requirements/operator.lock
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
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=build /opt/freehold /opt/freehold
USER 1000:1000
ENV PATH=/opt/freehold/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["freehold"]
CMD ["operator"]
