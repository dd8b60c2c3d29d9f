# pgne's image, for deploy/kubernetes/ (the StatefulSet runs it) or `docker run`:
#   docker build -t pgne:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v pgne-state:/var/lib/pgne \
#     -v "$PWD/config:/etc/pgne/config:ro" -p 9292:9292 \
#     pgne:0.1.0 run -c /etc/pgne/config/events_config.yml --state-dir /var/lib/pgne
# (--read-only: pgne writes only /tmp and its --state-dir, each a volume; a new named volume
# takes the image's /var/lib/pgne, owner 65532. Without -v, VOLUME below gives an anonymous one.)
# Two stages: the first builds pgne's wheel from the checkout, the second installs that wheel
# (and its dependencies from PyPI) into a virtualenv on a slim Python, and nothing else of the
# checkout: no compiler, no source tree.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY . .
RUN python -m pip install --no-cache-dir --disable-pip-version-check "setuptools>=70.1" \
    && python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation -w /wheels .

FROM ${PYTHON_IMAGE}
# The user of deploy/kubernetes/statefulset.yaml (runAsUser/runAsGroup 65532): a fixed UID, so
# the Secret's files (group-readable, fsGroup) and the volumes agree with it.
RUN groupadd --system --gid 65532 pgne \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgne \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/pgne
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/pgne \
    && /opt/pgne/bin/python -m pip install --no-cache-dir --disable-pip-version-check /wheels/pgne-*.whl \
    && rm -rf /wheels
# pgne on PATH. A read-only root file system: Python writes no bytecode (pip compiled it at
# install time); the only writable paths are volumes: /var/lib/pgne (--state-dir) and /tmp
# (for libraries that want one; pgne itself writes no temporary file).
ENV PATH=/opt/pgne/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /var/lib/pgne
VOLUME /var/lib/pgne
EXPOSE 9292
ENTRYPOINT ["pgne"]
CMD ["--help"]
