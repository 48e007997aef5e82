# The Freehold operator: control plane only (no serving engine, no torch).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t freehold-operator .
# The base is pinned by exact version; pin it by digest too in your registry mirror
# (python:3.11.7-slim-bookworm@sha256:...) so rebuilds are reproducible.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY serving ./serving
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin freehold
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "freehold[operator]" \
    && rm -rf /wheels \
    && pip uninstall -y pip setuptools wheel
USER 1000:1000
ENV PYTHONUNBUFFERED=1 HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["freehold"]
CMD ["operator"]
