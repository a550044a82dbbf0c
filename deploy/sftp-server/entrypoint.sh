#!/bin/sh
# Start the SFTP server: the drop folders (group-writable), then sshd in the foreground.
set -eu
umask 002
for folder in ${SFTP_FOLDERS:-}; do
  mkdir -p "/srv/sftp/${folder}"
done
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.sftp "$@"
