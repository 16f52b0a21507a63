#!/usr/bin/env bash
# A smoke check of the products stack without Docker (scripts/stack.sh), run
# by CI on every landing: `up` (build, start Postgres, Redis, NATS, the
# sidecar and two app instances), then a few of the walk-through's requests
# from examples/products/README.md:
#
#   1. a product read on both app instances (200, the same row; the second
#      read on the first instance is a cache hit);
#   2. the row changed behind the app's back with plain SQL (psql against
#      the stack's Postgres), then read on both instances, polling, until
#      each serves the new value: within SMOKE_DEADLINE_MS (1000) of the
#      commit, or the check fails;
#
# then `down` and `clean`, always (a trap), also when a check failed. Exits
# non-zero, with the tail of the services' logs, when anything fails.
#
# The stack lives in .stack-smoke/ on ports of its own (overridable with the
# variables stack.sh reads), so a developer's `scripts/stack.sh up` stack
# (.stack/, the default ports) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

export STACK_DIR="${STACK_DIR:-$PWD/.stack-smoke}"
export PG_PORT="${PG_PORT:-25432}"
export REDIS_PORT="${REDIS_PORT:-26379}"
export NATS_PORT="${NATS_PORT:-24222}"
export NATS_HTTP_PORT="${NATS_HTTP_PORT:-28222}"
export SIDECAR_PORT="${SIDECAR_PORT:-29187}"
export APP1_PORT="${APP1_PORT:-28081}"
export APP2_PORT="${APP2_PORT:-28082}"
export SEED="${SEED:-1000}"
# The debug binaries: CI runs this right after the test suite built them,
# and a release build of the app and the sidecar would add about 10 minutes.
export STACK_PROFILE="${STACK_PROFILE:-debug}"
DEADLINE_MS="${SMOKE_DEADLINE_MS:-1000}"
ID=7

log() { printf '[smoke] %s\n' "$*" >&2; }
fail() {
  printf '[smoke] FAIL: %s\n' "$*" >&2
  exit 1
}

show_logs() {
  local s
  for s in app1 app2 sidecar; do
    if [ -f "$STACK_DIR/$s.log" ]; then
      printf '\n[smoke] --- last lines of %s ---\n' "$STACK_DIR/$s.log" >&2
      tail -n 40 "$STACK_DIR/$s.log" >&2 || true
    fi
  done
}

finish() {
  local rc=$?
  trap - EXIT
  set +e
  [ $rc -eq 0 ] || show_logs
  log "scripts/stack.sh down"
  if ! scripts/stack.sh down; then
    log "FAIL: scripts/stack.sh down failed"
    rc=1
  elif scripts/stack.sh status | grep -q ' running '; then
    scripts/stack.sh status >&2
    log "FAIL: services still running after down"
    rc=1
  fi
  log "scripts/stack.sh clean"
  scripts/stack.sh clean || rc=1
  if [ -e "$STACK_DIR" ]; then
    log "FAIL: $STACK_DIR still there after clean"
    rc=1
  fi
  if [ $rc -eq 0 ]; then log "passed"; else log "failed"; fi
  exit $rc
}
trap finish EXIT

now_ms() { date +%s%3N; }

psql_bin() {
  local dir
  if command -v psql >/dev/null 2>&1; then command -v psql; return; fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/psql" ]; then echo "$dir/psql"; return; fi
  done
  return 1
}

# get URL: the response's status line and headers in $HEADERS, body in $BODY.
get() {
  local out
  out="$(curl -sS -i --max-time 5 "$1")" || fail "GET $1: curl failed"
  out="${out//$'\r'/}"
  HEADERS="${out%%$'\n\n'*}"
  BODY="${out#*$'\n\n'}"
}
status_of() { head -n1 <<<"$HEADERS" | awk '{print $2}'; }
header() { grep -i "^$1:" <<<"$HEADERS" | head -n1 | cut -d' ' -f2- || true; }

log "scripts/stack.sh up (stack in $STACK_DIR)"
scripts/stack.sh up
eval "$(scripts/stack.sh env)"
PSQL="$(psql_bin)" || fail "psql not found"

# 1. A product read on both instances.
get "$APP1/products/$ID"
[ "$(status_of)" = 200 ] || fail "GET $APP1/products/$ID: $(head -n1 <<<"$HEADERS"); body: $BODY"
[[ $BODY == *"\"id\":$ID,"* ]] || fail "GET $APP1/products/$ID: not product $ID: $BODY"
first="$BODY"
log "app1: GET /products/$ID: 200, x-cache: $(header x-cache), $BODY"
get "$APP1/products/$ID"
[ "$(status_of)" = 200 ] || fail "GET $APP1/products/$ID again: $(head -n1 <<<"$HEADERS")"
[ "$(header x-cache)" = hit ] || fail "GET $APP1/products/$ID again: x-cache: $(header x-cache), expected hit"
log "app1: GET /products/$ID again: 200, x-cache: hit"
get "$APP2/products/$ID"
[ "$(status_of)" = 200 ] || fail "GET $APP2/products/$ID: $(head -n1 <<<"$HEADERS"); body: $BODY"
[ "$BODY" = "$first" ] || fail "the instances disagree on product $ID: app1 $first, app2 $BODY"
log "app2: GET /products/$ID: 200, x-cache: $(header x-cache), the same row"

# 2. The row changed with plain SQL; both instances serve it within the deadline.
name="Renamed in SQL $(date +%s%N)"
out="$("$PSQL" -X -v ON_ERROR_STOP=1 "$DATABASE_URL" \
  -c "UPDATE products SET name = '$name', updated_at = now() WHERE id = $ID")" \
  || fail "psql UPDATE failed"
committed="$(now_ms)"
[ "$out" = "UPDATE 1" ] || fail "psql UPDATE: $out"
log "psql: UPDATE products SET name = '$name' WHERE id = $ID: $out"
for app in "$APP1" "$APP2"; do
  while :; do
    get "$app/products/$ID"
    elapsed=$(($(now_ms) - committed))
    if [ "$(status_of)" = 200 ] && [[ $BODY == *"\"name\":\"$name\""* ]]; then
      log "$app: the new name $elapsed ms after the commit (x-cache: $(header x-cache))"
      break
    fi
    [ "$elapsed" -le "$DEADLINE_MS" ] \
      || fail "$app still serves the old row $elapsed ms after the commit (deadline $DEADLINE_MS ms): $(head -n1 <<<"$HEADERS") $BODY"
    sleep 0.02
  done
done
