# shellcheck shell=bash
# Sourced by .ci/run: a private PostgreSQL server for the tests of the postgresql: store.
#
# Installs Debian's postgresql if initdb is missing, makes a data directory in a temporary
# directory owned by an unprivileged user (postgres refuses to run as root), starts the
# server on 127.0.0.1 on a free port, creates the database acmews_test, and exports
# ACMEWS_TEST_POSTGRESQL (the libpq URI the tests read). A trap stops the server and removes
# the directory when the calling shell exits. Without a server the tests say how to run them.

_pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

acmews_start_postgresql() {
  local bin user dir port
  if ! bin=$(_pg_bin); then
    echo "+ apt-get install postgresql (initdb not found)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
      >/dev/null 2>&1 || { echo "cannot install postgresql: its tests will skip"; return 0; }
    bin=$(_pg_bin) || { echo "postgresql installed but initdb not found"; return 0; }
  fi
  user=$(id -un)
  dir=$(mktemp -d /tmp/acmews-pg.XXXXXX)
  if [ "$(id -u)" -eq 0 ]; then
    user=nobody
    chown "$user" "$dir"
  fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  _pg_as() { if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi; }
  if ! _pg_as "$bin/initdb" -D "$dir/data" -U acmews --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
    ! _pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on" start >/dev/null; then
    echo "cannot start a private postgresql in $dir: its tests will skip"
    cat "$dir"/*.log 2>/dev/null | tail -n 5
    return 0
  fi
  _pg_as "$bin/createdb" -h 127.0.0.1 -p "$port" -U acmews acmews_test
  ACMEWS_PG_DIR=$dir
  ACMEWS_PG_BIN=$bin
  ACMEWS_PG_USER=$user
  export ACMEWS_TEST_POSTGRESQL="postgresql://acmews@127.0.0.1:$port/acmews_test"
  # the fault tests start servers of their own (they stop and start them) from these
  export ACMEWS_TEST_POSTGRESQL_BIN="$bin"
  # (after whatever EXIT trap is there already: other scripts sourced by .ci/run set theirs)
  local before
  before=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
  # shellcheck disable=SC2064
  trap "acmews_stop_postgresql${before:+; $before}" EXIT
  echo "+ postgresql on 127.0.0.1:$port ($dir, as $user)"
}

acmews_stop_postgresql() {
  [ -n "${ACMEWS_PG_DIR:-}" ] || return 0
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$ACMEWS_PG_USER" -- "$ACMEWS_PG_BIN/pg_ctl" -D "$ACMEWS_PG_DIR/data" -m fast -w stop >/dev/null 2>&1
  else
    "$ACMEWS_PG_BIN/pg_ctl" -D "$ACMEWS_PG_DIR/data" -m fast -w stop >/dev/null 2>&1
  fi
  rm -rf "$ACMEWS_PG_DIR"
  ACMEWS_PG_DIR=
}

acmews_start_postgresql
