#!/bin/sh
# Start redis-server with config/users.acl, each user's development password replaced by
# the one in the environment: the compose file and this script are the only places the
# passwords are set, so changing RECOVERY_WORKER_PASSWORD (in .env or the shell) changes
# Redis, every client URL and every healthcheck together.
#
#   RECOVERY_<USER>_PASSWORD   for USER in WORKER SERVICE OPERATOR EXPORTER; unset keeps
#                              the development password from the file (laptops only)
#   ACL_TEMPLATE               the ACL file with "<user>-dev-password" placeholders
#                              (default /usr/local/etc/redis/users.acl)
#   ACL_OUT                    where the rendered file is written, mode 600
#                              (default /data/users.acl)
#
# Passwords are restricted to [A-Za-z0-9._~-] (e.g. `openssl rand -hex 24`) so they are
# safe in a Redis URL and in the ACL file. Usage: redis-entrypoint.sh [redis-server args]
set -eu
template=${ACL_TEMPLATE:-/usr/local/etc/redis/users.acl}
out=${ACL_OUT:-/data/users.acl}
script=""
for user in worker service operator exporter; do
  var="RECOVERY_$(echo "$user" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  eval "password=\${$var:-}"
  [ -n "$password" ] || continue
  case $password in
    *[!A-Za-z0-9._~-]*)
      echo "redis-entrypoint: $var may only contain A-Z a-z 0-9 . _ ~ -" >&2
      exit 2 ;;
  esac
  script="$script s/>$user-dev-password\\([[:space:]]\\|\$\\)/>$password\\1/;"
done
umask 077
sed -e "$script" "$template" > "$out"
exec redis-server "$@" --aclfile "$out"
