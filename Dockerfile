# The one pdserve image: the operator, the endpoint picker, the routing sidecar and the
# simulated engine are all `pdserve <command>` (docker run IMAGE operator --webhook-port 9443).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# The package without its dev extras; then NIXL, the sim engine's KV transport (--no-deps
# skips its CUDA wheels, as `make install` does).
RUN pip install . \
    && pip install --no-deps 'nixl>=1.5,<2' 'nixl-cu12>=1.5,<2' \
    && rm -rf /build

# A numeric user, so that Kubernetes' runAsNonRoot can check it.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/pdserve pdserve
USER 10001
WORKDIR /home/pdserve

ENTRYPOINT ["pdserve"]
