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

# Exactly the versions of uv.lock (hash-checked), without the dev tools: uv, itself pinned by
# hash, exports the lock as a requirements file, then pip installs it and the project alone.
COPY scripts/uv-requirements.txt /tmp/uv-requirements.txt
RUN pip install --require-hashes -r /tmp/uv-requirements.txt
COPY pyproject.toml uv.lock README.md celeryconfig.py flowerconfig.py ./
RUN uv export --frozen --no-emit-project --no-header --format requirements-txt \
        --output-file /tmp/locked.txt \
    && pip install --require-hashes --no-deps -r /tmp/locked.txt \
    && pip uninstall --yes uv && rm /tmp/locked.txt /tmp/uv-requirements.txt
COPY worker ./worker
COPY producers ./producers
COPY gateway ./gateway
COPY embeddings_flower ./embeddings_flower
RUN pip install --no-deps . && rm -rf build *.egg-info

# The stub API (compose's `dev` profile: `python -m stubapi`) is not in the wheel, which holds
# only what runs in production. It needs nothing beyond the standard library; it sits in a
# directory of its own on PYTHONPATH, so it is found from any working directory and nothing
# else is shadowed.
COPY stubapi /opt/dev/stubapi
ENV PYTHONPATH=/opt/dev

USER app

# Flower: `embeddings-flower` (compose's flower service) refuses to start without
# FLOWER_BASIC_AUTH from any directory; ./flowerconfig.py applies the same rules to a
# `celery -A worker flower` started here in /app.
CMD ["celery", "-A", "worker", "worker", "--without-mingle", "--loglevel=INFO"]
