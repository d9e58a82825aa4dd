# SecFlow worker image: `docker compose up --build` builds it for the `worker`
# service; the same image runs the starter (`python -m starter ...`).
#
# Base pinned to a Python patch release on Debian 12. To upgrade, change the tag
# (https://hub.docker.com/_/python/tags), rebuild with --pull, run the test suite.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SECFLOW_DATA_DIR=/data

# nmap: the port and service scanners run it. tini: PID 1 that forwards SIGTERM
# to the worker and reaps the scanners' child processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nmap tini \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged user. nmap therefore runs without raw sockets (TCP connect scans),
# which is what an unprivileged scan does anywhere else too.
RUN groupadd --system --gid 10001 secflow \
    && useradd --system --uid 10001 --gid secflow --home-dir /home/secflow \
       --create-home --shell /usr/sbin/nologin secflow \
    && mkdir -p /data \
    && chown secflow:secflow /data
# A fresh named volume mounted at /data takes this directory's owner, so every
# worker replica can write the shared findings store and workspaces.

WORKDIR /app

# Dependencies first, in their own layer: editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY secflow/ ./secflow/
COPY workflows/ ./workflows/
COPY activities/ ./activities/
COPY starter/ ./starter/
COPY examples/ ./examples/
# semgrep rules shipped with SecFlow (the adapter reads them next to the code)
COPY rules/ ./rules/
COPY worker.py ./

RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

USER secflow

# The worker finishes or hands back its activities on SIGTERM; compose gives it
# stop_grace_period (30s) to do so before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--"]
CMD ["python", "worker.py"]
