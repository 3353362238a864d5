#!/usr/bin/env bash
# Build (and optionally push) the raymatch image, tagged with the package version from raymatch/__init__.py.
#
#   deploy/docker/build.sh                              # builds raymatch:<version>
#   REGISTRY=ghcr.io/you deploy/docker/build.sh         # builds ghcr.io/you/raymatch:<version>
#   REGISTRY=ghcr.io/you PUSH=1 deploy/docker/build.sh  # ... and pushes it
#   deploy/docker/build.sh --print-tag                  # prints the tag only, builds nothing
#   deploy/docker/build.sh --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
#
# Any other arguments go to `docker build` unchanged.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Read the version without importing the package (that would need its dependencies on the build host).
version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$root/raymatch/__init__.py")"
if [[ -z "$version" ]]; then
    echo "build.sh: no __version__ = \"...\" line in $root/raymatch/__init__.py" >&2
    exit 1
fi
tag="${REGISTRY:+${REGISTRY%/}/}raymatch:${version}"

if [[ "${1:-}" == "--print-tag" ]]; then
    echo "$tag"
    exit 0
fi

docker build \
    --file "$root/deploy/docker/Dockerfile" \
    --build-arg "RAYMATCH_VERSION=$version" \
    --tag "$tag" \
    "$@" \
    "$root"

if [[ "${PUSH:-0}" == "1" ]]; then
    if [[ -z "${REGISTRY:-}" ]]; then
        echo "build.sh: PUSH=1 needs REGISTRY (e.g. REGISTRY=ghcr.io/you)" >&2
        exit 1
    fi
    docker push "$tag"
fi
echo "$tag"
