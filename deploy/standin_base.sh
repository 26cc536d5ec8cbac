#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, for machines that have no registry to pull
# base images from (deploy/check_image.sh calls this when no such image is in local storage).
#
#   deploy/standin_base.sh [IMAGE]      default IMAGE: localhost/python-standin:3.11-slim-bookworm
#
# Debian 12 "minbase" (mmdebstrap) with python3.11, python3-venv and python-is-python3 (so
# `python` exists, as in the official image), passwd (groupadd/useradd) and ca-certificates.
# This machine's CA bundle and a pip.conf naming it go into the image, so that pip inside the
# build reaches the package index through whatever TLS-inspecting proxy this machine trusts.
# The official image keeps Python in /usr/local; this one in /usr (Debian's build): the
# Dockerfile only needs `python` on PATH, `python -m venv`, groupadd and useradd.
# Needs root, mmdebstrap and podman (apt-get install mmdebstrap podman); storage: vfs, the
# driver deploy/check_image.sh builds with.
set -euo pipefail

image="${1:-localhost/python-standin:3.11-slim-bookworm}"
storage=(--storage-driver "${STORAGE_DRIVER:-vfs}")
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
[ -r "$ca_bundle" ] || { echo "error: no CA bundle at $ca_bundle" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The hooks run on the host with the root file system as $1. The CA bundle is copied after
# ca-certificates is configured, so this machine's extra CAs are not regenerated away.
# shellcheck disable=SC2016  # $1 is expanded by mmdebstrap's hook shell, not here
mmdebstrap --variant=minbase --mode=root --format=tar \
    --include=python3.11,python3-venv,python-is-python3,passwd,ca-certificates \
    --customize-hook="cp '$ca_bundle' \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
    --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar" "$mirror"

podman "${storage[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$image" >/dev/null
echo "stand-in base image: $image"
