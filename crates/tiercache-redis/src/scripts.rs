//! The Lua scripts that make fills, invalidations and tag versions atomic.
//! Every script touches keys of one hash slot only, so each runs on Redis
//! Cluster as it does on a single server.
//!
//! Numbers pass as decimal strings: Redis Lua numbers are doubles, exact up to
//! 2^53, and microsecond timestamps (about 2^51 today) fit; they are written
//! with `%.0f` so no exponent notation reaches Redis.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: version, lease. ARGV: token, lease ttl in ms ("" for no lease).
/// Returns {version, got lease (0/1), held elsewhere (0/1)}.
pub(crate) static BEGIN_FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then v = '0' end
local got = 0
local held = 0
if ARGV[2] ~= '' then
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then got = 1 else held = 1 end
end
return {v, got, held}
",
    )
});

/// KEYS: value, version, lease. ARGV: ticket version, value, ttl ms, token ("" for none).
/// Releases the lease when the token holds it; stores the value when the
/// version is unchanged. Returns 1 when stored, 0 when refused.
pub(crate) static COMMIT_FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
local cur = redis.call('GET', KEYS[2])
if not cur then cur = '0' end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// KEYS: lease. ARGV: token. Deletes the lease when the token holds it.
pub(crate) static ABORT_FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// KEYS: value, version, lease (repeated, three per key, all one slot).
/// ARGV: version retention in ms. For each key: deletes value and lease and
/// sets the version to max(version + 1, TIME in µs), kept for the retention.
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS, 3 do
  redis.call('DEL', KEYS[i], KEYS[i + 2])
  local n = redis.call('INCR', KEYS[i + 1])
  if now > n then
    redis.call('SET', KEYS[i + 1], string.format('%.0f', now), 'PX', ARGV[1])
  else
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
  end
end
return 1
",
    )
});

/// KEYS: clock, tag keys... For each tag: v = max(clock + 1, TIME in µs);
/// the clock and the tag become v. Returns the last v as a string.
pub(crate) static INVALIDATE_TAGS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local clock = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
for i = 2, #KEYS do
  local v = clock + 1
  if now > v then v = now end
  clock = v
  local s = string.format('%.0f', v)
  redis.call('SET', KEYS[1], s)
  redis.call('SET', KEYS[i], s)
end
return string.format('%.0f', clock)
",
    )
});

/// KEYS: the namespace's clear key. ARGV: hard ("1" or "0"), the newest
/// epoch the caller knows. The epoch becomes one more than the greater of
/// the stored one and the caller's; a hard clear raises the floor to it.
/// Returns the new "epoch:floor".
pub(crate) static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e, f = 0, 0
local cur = redis.call('GET', KEYS[1])
if cur then
  local a, b = string.match(cur, '^(%d+):(%d+)$')
  e = tonumber(a) or 0
  f = tonumber(b) or 0
end
local after = tonumber(ARGV[2]) or 0
if after > e then e = after end
e = e + 1
if ARGV[1] == '1' then f = e end
local s = string.format('%.0f:%.0f', e, f)
redis.call('SET', KEYS[1], s)
return s
",
    )
});
