#!/bin/sh
# The keys and iSales credentials of the compose trial, in deploy/trial/secrets/ (git-ignored).
# The files are world-readable because compose bind-mounts them as they are, and the containers
# run as uid 10001; the folder itself is root's (or yours) alone. Your own login key stays 0600.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets && chmod 700 secrets && cd secrets
[ -f ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -C sftp-host -f ssh_host_ed25519_key
[ -f isales_sftp_key ] || ssh-keygen -q -t ed25519 -N '' -C isales -f isales_sftp_key
[ -f client_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C uploader -f client_ed25519
cat isales_sftp_key.pub client_ed25519.pub > authorized_keys
echo "[127.0.0.1]:2222 $(cut -d' ' -f1,2 ssh_host_ed25519_key.pub)" > known_hosts
[ -f isales_ak ] || printf 'trial-ak' > isales_ak
[ -f isales_sk ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > isales_sk
chmod 644 ssh_host_ed25519_key isales_sftp_key authorized_keys known_hosts isales_ak isales_sk
chmod 600 client_ed25519
echo "secrets in $(pwd)"
