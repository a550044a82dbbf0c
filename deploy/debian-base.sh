#!/usr/bin/env bash
# A base image made from Debian packages, for machines that reach no image registry:
# bookworm minbase with Python 3.11 and OpenSSH, imported into podman (or docker) as $1.
# The root file system is cached as a tarball; a minute the first time, seconds after.
set -euo pipefail
name=${1:-localhost/debian-python:bookworm}
engine=${ENGINE:-$(command -v podman || command -v docker)}
cache=${CACHE:-/var/cache/isales-watcher}
tarball="$cache/debian-bookworm-python-sshd.tar.gz"
if [ ! -f "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "debian-base: apt-get install debootstrap" >&2; exit 1; }
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,openssh-server \
    bookworm "$root" "${MIRROR:-http://deb.debian.org/debian}" >/dev/null
  # No host keys, package lists or downloaded packages in the base.
  rm -rf "$root"/etc/ssh/ssh_host_* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | gzip -1 > "$tarball.partial"
  mv "$tarball.partial" "$tarball"
fi
"$engine" import "$tarball" "$name" >/dev/null
echo "$name"
