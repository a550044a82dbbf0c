#!/bin/sh
# Start the SFTP server: the host key from the secret into /run/sftp (sshd wants it private to
# its owner, which a mounted secret is not), the drop folders, then sshd in the foreground.
set -eu
umask 077
install -m 0600 "${SFTP_HOST_KEY:-/run/secrets/ssh_host_ed25519_key}" /run/sftp/ssh_host_ed25519_key
umask 002
for folder in ${SFTP_FOLDERS:-}; do
  mkdir -p "/srv/sftp/${folder}"
done
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.sftp "$@"
