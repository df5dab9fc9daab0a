# syntax=docker/dockerfile:1
# sniffer edge router image.
#   docker build -t sniffer:0.1.0 --build-arg VERSION=0.1.0 .
# Builder: turns the source and every dependency into wheels (uvloop and cryptography
# come as manylinux wheels, so no compiler is needed even here).
# Final: python:slim with only those wheels installed; no pip cache, no build tools,
# no source tree, numeric non-root user. No HEALTHCHECK: Kubernetes probes the admin
# endpoint (/healthz, /readyz) itself.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sniffer ./sniffer
RUN pip wheel --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
# VERSION must equal sniffer.__version__ (the install below pins it; a test checks).
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sniffer" \
      org.opencontainers.image.description="SNI / Host routing edge for multi-tenant Kubernetes clusters: reads the TLS SNI or HTTP Host, relays bytes untouched to the tenant's router." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted, not copied, so they never become a layer of this image.
# pip compiles the .pyc files at install time (the root filesystem is read-only at run
# time), then pip itself is removed: nothing in the image installs anything later.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "sniffer==${VERSION}" \
    && pip uninstall --yes pip \
    && sniffer --version
# 65532: the conventional "nonroot" uid/gid; numeric so that runAsNonRoot can verify it.
USER 65532:65532
# Unprivileged ports (manifests map the node's 443/80 onto them) and the admin endpoint.
EXPOSE 8443 8443/udp 8080 9190
ENTRYPOINT ["sniffer"]
CMD ["serve", "--kubernetes", "--listen", "tls:0.0.0.0:8443@443", "--listen", "http:0.0.0.0:8080@80", "--listen", "quic:0.0.0.0:8443@443", "--admin", "0.0.0.0:9190"]
