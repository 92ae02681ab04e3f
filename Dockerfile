# Segflow's production image. docker-compose.yml runs it next to Redis 7 and PostgreSQL; on its
# own (`docker run -p 8000:8000 segflow`) it runs `segflow up` with the embedded defaults.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEGFLOW_DATA_DIR=/var/lib/segflow

WORKDIR /srv/segflow

# Dependencies first, in a layer keyed on pyproject.toml alone, so a code change does not rebuild
# durable-rules' C engine: the project is installed once from empty stub packages, then removed.
# durable-rules builds at -O0 unless CPPFLAGS asks for -O2 (8-60% faster; see the Makefile). gcc
# and libc6-dev (its headers, which --no-install-recommends would leave out) live only in this
# layer.
COPY pyproject.toml ./
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && mkdir app pipelines \
 && touch README.md app/__init__.py pipelines/__init__.py \
 && CPPFLAGS=-O2 pip install . \
 && pip uninstall -y segflow \
 && rm -rf README.md app pipelines build segflow.egg-info \
 && apt-get purge -y --auto-remove gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

# Editable, on purpose: app/migrate.py finds alembic.ini and migrations/ beside the app package,
# so the package must be imported from this tree, not from a copy in site-packages.
COPY . .
RUN pip install --no-deps -e . \
 && python -m compileall -q app pipelines migrations \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/segflow segflow \
 && install -d -o segflow -g segflow /var/lib/segflow

# Numeric, so Kubernetes' runAsNonRoot can verify it. The code stays root-owned and read-only;
# the process writes only to SEGFLOW_DATA_DIR.
USER 10001:10001
EXPOSE 8000
CMD ["segflow", "up", "--host", "0.0.0.0", "--port", "8000"]
