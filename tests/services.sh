#!/usr/bin/env bash
# Make sure the servers the test suite talks to answer on loopback:
# RabbitMQ (AMQP 5672 + management API 15672), Redis (6379) and PostgreSQL (5432,
# user postgres, database test).
# Starts a server that is installed but stopped, installs one that is missing,
# and waits (bounded) until each answers. Also installs Graphviz (`dot`), which the
# suite uses to check `kanin topology graph --format dot`, and Chromium with ChromeDriver,
# which load the page of `kanin docs`. Safe to run again and again.
set -euo pipefail

WAIT_SECONDS="${KANIN_SERVICES_TIMEOUT:-120}"
export DEBIAN_FRONTEND=noninteractive

say() { printf 'services: %s\n' "$*"; }
fail() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else fail "need root to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || fail "$1 is not installed and apt-get is not available; install $1 yourself"
  if [ "$APT_UPDATED" -eq 0 ]; then as_root apt-get update -q; APT_UPDATED=1; fi
  say "installing $*"
  as_root apt-get install -y -q "$@"
}

wait_for() {  # wait_for <what> <command...>
  local what="$1"; shift
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what did not answer within ${WAIT_SECONDS}s"
    sleep 1
  done
  say "$what is ready"
}

management_answers() {
  python3 - <<'PY'
import base64, sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:15672/api/overview")
req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
sys.exit(0 if urllib.request.urlopen(req, timeout=3).status == 200 else 1)
PY
}

rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
    if ! port_open 5672; then
      say "starting rabbitmq-server"
      as_root rabbitmq-server -detached
    fi
  fi
  wait_for "RabbitMQ (5672)" port_open 5672
  if ! management_answers 2>/dev/null; then
    say "enabling the RabbitMQ management plugin"
    wait_for "RabbitMQ node" as_root rabbitmqctl -q await_startup
    as_root rabbitmq-plugins enable -q rabbitmq_management
  fi
  wait_for "RabbitMQ management API (15672)" management_answers
}

redis() {
  if ! port_open 6379; then
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    if ! port_open 6379; then
      say "starting redis-server"
      local dir="${TMPDIR:-/tmp}/kanin-redis"
      mkdir -p "$dir"
      redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
        --appendonly no --dir "$dir" --logfile "$dir/redis.log"
    fi
  fi
  wait_for "Redis (6379)" port_open 6379
}

postgres_answers() {
  psql -h 127.0.0.1 -U postgres -d test -tAc 'select 1' 2>/dev/null | grep -q 1
}

postgresql() {
  if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
    if ! port_open 5432; then
      local version
      version="$(ls /etc/postgresql | sort -V | tail -n 1)"
      say "starting PostgreSQL $version"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
  fi
  wait_for "PostgreSQL (5432)" port_open 5432
  if ! postgres_answers; then  # a fresh install: trust auth on loopback, database test
    local hba
    hba="$(as_root su postgres -c "psql -tAc 'show hba_file'")"
    if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      say "PostgreSQL: trusting loopback connections (test machine)"
      as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      as_root su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
    fi
    as_root su postgres -c "createdb test" 2>/dev/null || true
  fi
  wait_for "PostgreSQL database test" postgres_answers
}

graphviz() {
  command -v dot >/dev/null 2>&1 || apt_install graphviz
}

browser() {  # headless, for the test of the event catalog page (kanin docs)
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
  fi
}

rabbitmq
redis
postgresql
graphviz
browser
