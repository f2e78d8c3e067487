# Stand-ins for Flower's published images (flwr/superlink, flwr/supernode, flwr/superexec),
# for machines that cannot pull from Docker Hub: the same layout on a base image given as a
# build argument. `make compose-test` builds them only when the real images cannot be
# pulled (deploy/engine.py); docker/Dockerfile then builds FROM them unchanged.
#
#   docker build -f docker/flwr-standin.Dockerfile --target superlink \
#       --build-arg BASE_IMAGE=<a Debian with python3 + python3-venv> -t flwr/superlink:1.42.0 .
#
# What the published images give and the project relies on: `python` and Flower in a venv on
# PATH and owned by `app` (49999:49999, so images built FROM them can pip install), /app as
# its home and working directory, the Flower command
# as the entrypoint.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE} AS flwr-base

ARG FLWR_VERSION=1.42.0

RUN python3 -m venv /python/venv \
    && /python/venv/bin/python -m pip install --no-cache-dir "flwr==${FLWR_VERSION}" \
    && echo "app:x:49999:49999::/app:/usr/sbin/nologin" >> /etc/passwd \
    && echo "app:x:49999:" >> /etc/group \
    && mkdir -p /app \
    && chown -R 49999:49999 /app /python

ENV PATH=/python/venv/bin:${PATH} \
    HOME=/app
WORKDIR /app
USER app

FROM flwr-base AS superlink
ENTRYPOINT ["flower-superlink"]

FROM flwr-base AS supernode
ENTRYPOINT ["flower-supernode"]

FROM flwr-base AS superexec
ENTRYPOINT ["flower-superexec"]
