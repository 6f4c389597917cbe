#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for the shared-storage tests and prints
# its URL. Installs the server from Debian's packages when it is missing.
set -euo pipefail
# A free loopback port unless one is given (another server may hold the usual ones).
port="${1:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
bin=$(find_bin)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1
  bin=$(find_bin)
fi
[ -x "$bin/initdb" ] || { echo "postgres.sh: no PostgreSQL server could be installed" >&2; exit 1; }
dir=$(mktemp -d /tmp/autoslim-pg.XXXXXX)
as_owner=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root.
  chown postgres "$dir"
  as_owner=(runuser -u postgres --)
fi
"${as_owner[@]}" "$bin/initdb" -D "$dir/data" -A trust -U autoslim >/dev/null
"${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
"${as_owner[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U autoslim autoslim_test
echo "postgresql://autoslim@127.0.0.1:$port/autoslim_test"
