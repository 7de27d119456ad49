# shellcheck shell=bash
# A private Redis for the tests of the cluster directory and relay (acmews.cluster).
#
# Sourced by .ci/run (and usable by hand: `. .ci/lib/redis.sh`): installs Debian's
# redis-server if it is missing, starts one instance in a temporary directory on a free
# loopback port (no persistence), as the unprivileged user "redis" when there is one, and
# exports ACMEWS_TEST_REDIS=redis://127.0.0.1:PORT. A trap on EXIT stops it and removes the
# directory. On failure it says so on one line and leaves ACMEWS_TEST_REDIS unset: the Redis
# tests then skip, saying how to enable them.

acmews_redis_start() {
  if ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "+ apt-get install -y redis-server"
      (apt-get install -y -q redis-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }) \
        || true
    fi
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis.sh: redis-server is not installed; the Redis tests will be skipped"
    return 0
  fi
  ACMEWS_REDIS_DIR=$(mktemp -d /tmp/acmews-redis.XXXXXX)
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  local runas=()
  if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
    chown redis "$ACMEWS_REDIS_DIR"
    runas=(runuser -u redis --)
  fi
  "${runas[@]}" redis-server --bind 127.0.0.1 --port "$port" --dir "$ACMEWS_REDIS_DIR" \
    --save "" --appendonly no --daemonize yes --databases 64 \
    --pidfile "$ACMEWS_REDIS_DIR/redis.pid" --logfile "$ACMEWS_REDIS_DIR/redis.log" \
    >/dev/null 2>&1
  local i
  for i in $(seq 1 50); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      export ACMEWS_TEST_REDIS="redis://127.0.0.1:$port"
      export ACMEWS_REDIS_DIR
      echo "redis.sh: Redis on 127.0.0.1:$port (ACMEWS_TEST_REDIS)"
      # chained to a trap already set (another service's), not replacing it
      local previous
      previous=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\\1/")
      # shellcheck disable=SC2064
      trap "acmews_redis_stop${previous:+; $previous}" EXIT
      return 0
    fi
    sleep 0.1
  done
  echo "redis.sh: redis-server did not start; the Redis tests will be skipped"
  cat "$ACMEWS_REDIS_DIR/redis.log" 2>/dev/null | tail -n 5
  acmews_redis_stop
}

acmews_redis_stop() {
  if [ -n "${ACMEWS_REDIS_DIR:-}" ] && [ -d "$ACMEWS_REDIS_DIR" ]; then
    if [ -f "$ACMEWS_REDIS_DIR/redis.pid" ]; then
      kill "$(cat "$ACMEWS_REDIS_DIR/redis.pid")" 2>/dev/null || true
      local i
      for i in $(seq 1 50); do
        kill -0 "$(cat "$ACMEWS_REDIS_DIR/redis.pid" 2>/dev/null)" 2>/dev/null || break
        sleep 0.1
      done
    fi
    rm -rf "$ACMEWS_REDIS_DIR"
  fi
  unset ACMEWS_TEST_REDIS ACMEWS_REDIS_DIR
}

acmews_redis_start
