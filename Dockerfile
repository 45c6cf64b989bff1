# The project's one image: worker, Flower, the gateway, the CLI and the stub API run from it.
# No secret is baked in: the API key and Flower's login come from the environment at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# A fixed non-root uid; /data is where Flower keeps its state (a named volume in compose),
# so it must belong to that user before the volume is first created from it.
RUN useradd --create-home --uid 10001 app \
    && mkdir /data \
    && chown app:app /data

COPY pyproject.toml README.md celeryconfig.py flowerconfig.py ./
COPY worker ./worker
COPY producers ./producers
COPY gateway ./gateway
COPY stubapi ./stubapi
COPY devstack ./devstack
RUN pip install . && rm -rf build *.egg-info

USER app

# Flower reads ./flowerconfig.py, which refuses to start without FLOWER_BASIC_AUTH.
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
