# shellcheck shell=bash
# HAProxy for the test of the cluster's load-balancer configuration
# (examples/cluster/haproxy.cfg, tests/test_cluster_haproxy.py): Debian's haproxy, installed
# if missing. Nothing is started here: the test runs its own instance and stops it. Without
# it that test skips, saying so.
if ! command -v haproxy >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "+ apt-get install -y haproxy"
  (apt-get install -y -q haproxy >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q haproxy >/dev/null 2>&1; }) \
    || echo "haproxy.sh: could not install haproxy; its test will be skipped"
fi
