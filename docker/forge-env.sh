#!/bin/sh
# Run a command with the BuildKit secrets vllm-forge may have mounted, then forget them.
#   /run/secrets/ca_bundle      PEM bundle for pip, uv, git, curl, requests (a proxy/corporate CA)
#   /run/secrets/pip_index_url  an index URL that carries credentials (never a build ARG)
#   /root/.netrc                private-index logins (pip, uv and git read it themselves)
# Secrets are mounted for one RUN only: nothing here is written into a layer.
set -e
if [ -s /run/secrets/ca_bundle ]; then
    export PIP_CERT=/run/secrets/ca_bundle SSL_CERT_FILE=/run/secrets/ca_bundle \
        REQUESTS_CA_BUNDLE=/run/secrets/ca_bundle CURL_CA_BUNDLE=/run/secrets/ca_bundle \
        GIT_SSL_CAINFO=/run/secrets/ca_bundle
fi
if [ -s /run/secrets/pip_index_url ]; then
    PIP_INDEX_URL="$(cat /run/secrets/pip_index_url)"
    export PIP_INDEX_URL UV_DEFAULT_INDEX="$PIP_INDEX_URL" UV_INDEX_URL="$PIP_INDEX_URL"
fi
exec "$@"
