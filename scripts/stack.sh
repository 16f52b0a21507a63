#!/usr/bin/env bash
# The products example's stack on loopback, without Docker: Postgres
# (wal_level=logical), Redis, NATS (JetStream), tiercache-sidecar and two app
# instances. Everything lives under .stack/ (data, logs, pid files) and uses
# fixed non-standard ports, so it never touches system services.
#
#   scripts/stack.sh up              build, start everything, wait until healthy
#                                    (an empty database is seeded with $SEED=10000 products)
#   scripts/stack.sh down            stop everything (data kept; `clean` removes it)
#   scripts/stack.sh status          what runs, with pids and ports
#   scripts/stack.sh env             `export DATABASE_URL=...` lines (eval them)
#   scripts/stack.sh stop SERVICE    stop one of: redis nats postgres sidecar app1 app2
#   scripts/stack.sh start SERVICE   start it again (and wait until healthy)
#   scripts/stack.sh logs SERVICE    tail its log
#   scripts/stack.sh clean           down, then delete .stack/
#
# Ports (override with the environment variables of the same names):
#   postgres 15432, redis 16379, nats 14222 (monitoring 18222),
#   sidecar /healthz+/metrics 19187, app1 8081, app2 8082.
# STACK_PROFILE=debug runs debug builds of the app and the sidecar (default:
# release).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK="${STACK_DIR:-$ROOT/.stack}"
PG_PORT="${PG_PORT:-15432}"
REDIS_PORT="${REDIS_PORT:-16379}"
NATS_PORT="${NATS_PORT:-14222}"
NATS_HTTP_PORT="${NATS_HTTP_PORT:-18222}"
SIDECAR_PORT="${SIDECAR_PORT:-19187}"
APP1_PORT="${APP1_PORT:-8081}"
APP2_PORT="${APP2_PORT:-8082}"
DB_NAME=products
NATS_STREAM=TIERCACHE

DATABASE_URL="postgres://postgres@127.0.0.1:${PG_PORT}/${DB_NAME}"
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"
NATS_URL="nats://127.0.0.1:${NATS_PORT}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# release (the default) or debug: CI's smoke run uses the debug binaries the
# test suite has just built rather than compiling everything again.
STACK_PROFILE="${STACK_PROFILE:-release}"
case "$STACK_PROFILE" in
  release) PROFILE_FLAG=(--release) ;;
  debug) PROFILE_FLAG=() ;;
  *) printf '[stack] error: STACK_PROFILE must be release or debug, not %s\n' "$STACK_PROFILE" >&2; exit 2 ;;
esac
APP_BIN="$TARGET_DIR/$STACK_PROFILE/products"
SIDECAR_BIN="$TARGET_DIR/$STACK_PROFILE/tiercache-sidecar"
SERVICES=(postgres redis nats sidecar app1 app2)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return; fi
  done
  return 1
}

nats_bin() {
  command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; }
}

# Installs redis-server, nats-server and Postgres where missing (Debian/Ubuntu).
ensure_packages() {
  local need=()
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
  nats_bin >/dev/null 2>&1 || need+=(nats-server)
  pg_bin initdb >/dev/null 2>&1 || need+=(postgresql)
  pg_bin psql >/dev/null 2>&1 || need+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing: ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

build() {
  log "building the app and the sidecar ($STACK_PROFILE)"
  (cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -p tiercache-products -p tiercache-sidecar \
    --bin products --bin tiercache-sidecar)
}

# --- process helpers -------------------------------------------------------

pidfile() { echo "$STACK/$1.pid"; }
logfile() { echo "$STACK/$1.log"; }

pid_of() {
  local f
  if [ "$1" = postgres ]; then
    f="$STACK/pg/data/postmaster.pid"
  else
    f="$(pidfile "$1")"
  fi
  [ -f "$f" ] || return 1
  local pid
  pid="$(head -n1 "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

running() { pid_of "$1" >/dev/null 2>&1; }

# spawn NAME CMD...: runs CMD detached, its output in NAME.log, its pid in NAME.pid.
stack_dir() {
  mkdir -p "$STACK"
  # Keep the stack's data, logs and pids out of git.
  [ -f "$STACK/.gitignore" ] || echo '*' >"$STACK/.gitignore"
}

spawn() {
  local name=$1; shift
  stack_dir
  printf '\n--- %s: starting: %s\n' "$(date -Is)" "$*" >>"$(logfile "$name")"
  nohup setsid "$@" >>"$(logfile "$name")" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# wait_for NAME TIMEOUT_S CHECK...: polls CHECK until it succeeds.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      tail -n 30 "$(logfile "$name")" >&2 || true
      die "$name exited during start (log: $(logfile "$name"))"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 30 "$(logfile "$name")" >&2 || true
      die "$name not ready after ${timeout}s (log: $(logfile "$name"))"
    fi
    sleep 0.2
  done
}

http_ok() { curl -fsS --max-time 2 "$1" >/dev/null; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_free_or_die() {
  local name=$1 port=$2
  if tcp_open "$port"; then
    die "port $port (for $name) is already in use by another process"
  fi
}

# --- services ----------------------------------------------------------------

PG_USER_RUN=()
pg_prepare_user() {
  PG_USER_RUN=()
  if [ "$(id -u)" -eq 0 ]; then
    id -u postgres >/dev/null 2>&1 || die "running as root but there is no postgres user (install postgresql)"
    PG_USER_RUN=(runuser -u postgres --)
  fi
}

psql_stack() {
  local db=$1; shift
  "$(pg_bin psql)" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" "$@"
}

start_postgres() {
  running postgres && { log "postgres already running"; return; }
  pg_prepare_user
  local pgdir="$STACK/pg"
  stack_dir
  mkdir -p "$pgdir/sock"
  if [ ${#PG_USER_RUN[@]} -gt 0 ]; then chown -R postgres: "$pgdir"; fi
  if [ ! -f "$pgdir/data/PG_VERSION" ]; then
    log "initialising Postgres in $pgdir/data"
    rm -rf "$pgdir/data"
    (cd "$pgdir" && "${PG_USER_RUN[@]}" "$(pg_bin initdb)" -D "$pgdir/data" -U postgres -A trust \
      -E UTF8 --locale=C --no-instructions >"$STACK/postgres-initdb.log" 2>&1) \
      || { cat "$STACK/postgres-initdb.log" >&2; die "initdb failed"; }
    cat >>"$pgdir/data/postgresql.conf" <<EOF

# scripts/stack.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$pgdir/sock'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_connections = 200
EOF
  fi
  port_free_or_die postgres "$PG_PORT"
  log "starting postgres on 127.0.0.1:$PG_PORT"
  touch "$(logfile postgres)"
  if [ ${#PG_USER_RUN[@]} -gt 0 ]; then chown postgres: "$(logfile postgres)"; fi
  (cd "$pgdir" && "${PG_USER_RUN[@]}" "$(pg_bin pg_ctl)" -D "$pgdir/data" -l "$(logfile postgres)" \
    -w -t 60 start >/dev/null) || { tail -n 30 "$(logfile postgres)" >&2; die "postgres did not start"; }
  wait_for postgres 30 psql_stack postgres -c 'select 1'
  if [ "$(psql_stack postgres -Atc "select 1 from pg_database where datname = '$DB_NAME'")" != 1 ]; then
    psql_stack postgres -c "CREATE DATABASE $DB_NAME"
  fi
  # The table must exist before the sidecar starts (it checks its rules
  # against the catalog); the app runs the same idempotent script.
  PGOPTIONS="-c client_min_messages=warning" psql_stack "$DB_NAME" -f "$ROOT/examples/products/schema.sql" >/dev/null
  # A fresh database gets products to play with (SEED=0 to skip).
  if [ "${SEED:-10000}" -gt 0 ] && [ -x "$APP_BIN" ] \
    && [ "$(psql_stack "$DB_NAME" -Atc 'select count(*) from products')" = 0 ]; then
    log "seeding ${SEED:-10000} products"
    DATABASE_URL="$DATABASE_URL" RUST_LOG=warn "$APP_BIN" --seed "${SEED:-10000}" >&2
  fi
}

stop_postgres() {
  running postgres || return 0
  pg_prepare_user
  log "stopping postgres"
  (cd "$STACK/pg" && "${PG_USER_RUN[@]}" "$(pg_bin pg_ctl)" -D "$STACK/pg/data" -m fast -w -t 30 stop >/dev/null) || true
}

start_redis() {
  running redis && { log "redis already running"; return; }
  port_free_or_die redis "$REDIS_PORT"
  mkdir -p "$STACK/redis"
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STACK/redis" \
    --save '' --appendonly no --daemonize no
  wait_for redis 20 bash -c "[ \"\$(redis-cli -p $REDIS_PORT ping)\" = PONG ]"
}

start_nats() {
  running nats && { log "nats already running"; return; }
  port_free_or_die nats "$NATS_PORT"
  mkdir -p "$STACK/nats"
  log "starting nats (JetStream) on 127.0.0.1:$NATS_PORT"
  spawn nats "$(nats_bin)" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_HTTP_PORT" -js -sd "$STACK/nats"
  wait_for nats 20 http_ok "http://127.0.0.1:$NATS_HTTP_PORT/healthz?js-enabled-only=true"
}

start_sidecar() {
  running sidecar && { log "sidecar already running"; return; }
  [ -x "$SIDECAR_BIN" ] || die "$SIDECAR_BIN missing: run \`scripts/stack.sh up\` (it builds)"
  port_free_or_die sidecar "$SIDECAR_PORT"
  log "starting tiercache-sidecar (metrics on 127.0.0.1:$SIDECAR_PORT)"
  spawn sidecar env \
    TIERCACHE_DATABASE_URL="$DATABASE_URL" \
    TIERCACHE_REDIS_URL="$REDIS_URL" \
    TIERCACHE_NATS_URL="$NATS_URL" \
    TIERCACHE_HTTP_LISTEN="127.0.0.1:$SIDECAR_PORT" \
    RUST_LOG="${RUST_LOG:-info}" \
    "$SIDECAR_BIN" run --config "$ROOT/examples/products/sidecar.toml"
  wait_for sidecar 30 http_ok "http://127.0.0.1:$SIDECAR_PORT/healthz"
}

start_app() {
  local name=$1 port=$2
  running "$name" && { log "$name already running"; return; }
  [ -x "$APP_BIN" ] || die "$APP_BIN missing: run \`scripts/stack.sh up\` (it builds)"
  port_free_or_die "$name" "$port"
  log "starting $name on http://127.0.0.1:$port"
  spawn "$name" env \
    DATABASE_URL="$DATABASE_URL" \
    REDIS_URL="$REDIS_URL" \
    NATS_URL="$NATS_URL" \
    NATS_STREAM="$NATS_STREAM" \
    LISTEN_ADDR="127.0.0.1:$port" \
    RUST_LOG="${RUST_LOG:-info}" \
    "$APP_BIN"
  wait_for "$name" 60 http_ok "http://127.0.0.1:$port/healthz"
}

start_service() {
  case "$1" in
    postgres) start_postgres ;;
    redis) start_redis ;;
    nats) start_nats ;;
    sidecar) start_sidecar ;;
    app1) start_app app1 "$APP1_PORT" ;;
    app2) start_app app2 "$APP2_PORT" ;;
    *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;;
  esac
}

stop_service() {
  local name=$1
  case "$name" in
    postgres) stop_postgres; return ;;
    redis | nats | sidecar | app1 | app2) ;;
    *) die "unknown service '$name' (one of: ${SERVICES[*]})" ;;
  esac
  local pid
  pid="$(pid_of "$name")" || { rm -f "$(pidfile "$name")"; return 0; }
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      log "$name did not stop in 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$(pidfile "$name")"
}

port_of() {
  case "$1" in
    postgres) echo "$PG_PORT" ;; redis) echo "$REDIS_PORT" ;; nats) echo "$NATS_PORT" ;;
    sidecar) echo "$SIDECAR_PORT" ;; app1) echo "$APP1_PORT" ;; app2) echo "$APP2_PORT" ;;
  esac
}

status() {
  local s pid any=0
  for s in "${SERVICES[@]}"; do
    if pid="$(pid_of "$s")"; then
      printf '%-9s running  pid %-7s 127.0.0.1:%s\n' "$s" "$pid" "$(port_of "$s")"
      any=1
    else
      printf '%-9s stopped\n' "$s"
    fi
  done
  if [ $any -eq 1 ]; then printf '\nlogs: %s/<service>.log\n' "$STACK"; fi
}

print_env() {
  cat <<EOF
export DATABASE_URL=$DATABASE_URL
export REDIS_URL=$REDIS_URL
export NATS_URL=$NATS_URL
export NATS_STREAM=$NATS_STREAM
export APP1=http://127.0.0.1:$APP1_PORT
export APP2=http://127.0.0.1:$APP2_PORT
EOF
}

cmd="${1:-}"
case "$cmd" in
  up)
    ensure_packages
    build
    for s in "${SERVICES[@]}"; do start_service "$s"; done
    log "stack is up: app1 http://127.0.0.1:$APP1_PORT  app2 http://127.0.0.1:$APP2_PORT"
    log "environment: eval \"\$(scripts/stack.sh env)\""
    ;;
  down)
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_service "${SERVICES[$i]}"; done
    ;;
  clean)
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_service "${SERVICES[$i]}"; done
    log "removing $STACK"
    rm -rf "$STACK"
    ;;
  status) status ;;
  env) print_env ;;
  start | stop | restart)
    [ $# -eq 2 ] || die "usage: $0 $cmd SERVICE (one of: ${SERVICES[*]})"
    case "$cmd" in
      start) start_service "$2" ;;
      stop) stop_service "$2" ;;
      restart) stop_service "$2"; start_service "$2" ;;
    esac
    ;;
  logs)
    [ $# -eq 2 ] || die "usage: $0 logs SERVICE"
    exec tail -n 100 -F "$(logfile "$2")"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    [ -z "$cmd" ] || exit 2
    ;;
esac
