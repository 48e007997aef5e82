# The Freehold operator: control plane only (no serving engine, no torch).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t freehold-operator .
# The base is pinned by exact version; pin it by digest too in your registry mirror
# (python:3.11.7-slim-bookworm@sha256:...) so rebuilds are reproducible.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY requirements/operator.lock requirements/
# Every dependency pinned and checked against its hash (scripts/lock makes the lock).
RUN python -m venv /opt/freehold \
    && /opt/freehold/bin/pip install --no-cache-dir --require-hashes \
         -r requirements/operator.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY serving ./serving
RUN /opt/freehold/bin/pip install --no-cache-dir --no-deps . \
    && /opt/freehold/bin/pip uninstall -y pip setuptools wheel
# A CycloneDX SBOM of the image's Python environment, shipped inside the image.
RUN pip install --no-cache-dir "cyclonedx-bom==7.5.0" \
    && mkdir -p /opt/freehold/share/freehold \
    && cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
         --of JSON -o /opt/freehold/share/freehold/sbom.cdx.json /opt/freehold/bin/python

FROM ${PYTHON_IMAGE}
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=build /opt/freehold /opt/freehold
USER 1000:1000
ENV PATH=/opt/freehold/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["freehold"]
CMD ["operator"]
