"""The Lua scripts of the Redis rate limits (ratelimits.py), all in the slot tagged {rl}: every
limit a call asks is checked and taken in one atomic step (see engine/ports/ratelimits.py for
the rule, state/rate_math.py for the same arithmetic in Python). Times are the server's, in ms.

KEYS (both scripts): definitions (hash key -> `limit|period ms|burst`), theoretical arrival
times (hash key -> ms), window sums (hash key -> units granted within the last period), the
grant counter; the grants of key K are the zset `<prefix>K`: member `<n>|<units>`, score ms.
"""

from __future__ import annotations

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function definition(key)
  local d = redis.call('HGET', KEYS[1], key)
  if not d then return nil end
  local limit, period, burst = string.match(d, '^([^|]+)|([^|]+)|([^|]+)$')
  return tonumber(limit), tonumber(period), tonumber(burst)
end
local function units_of(member) return tonumber(string.match(member, '|(.+)$')) end
-- drop the grants older than one period; the units granted within it
local function window(key, grants, period, now)
  local used = tonumber(redis.call('HGET', KEYS[3], key) or '0')
  local old = redis.call('ZRANGEBYSCORE', grants, '-inf', now - period)
  if #old > 0 then
    for _, m in ipairs(old) do used = used - units_of(m) end
    redis.call('ZREMRANGEBYSCORE', grants, '-inf', now - period)
    if used < 1e-9 then used = 0 end
    redis.call('HSET', KEYS[3], key, used)
  end
  return used
end
-- ms until `n` units may be granted (0: now): room in the window (`live`, the grants of the last
-- period as ZRANGE ... WITHSCORES gives them, oldest first, `used` their sum) and under the GCRA
local function wait_for(live, used, n, limit, period, burst, tat, now)
  local capacity = limit + burst
  local wait = 0
  if used + n > capacity + 1e-9 then
    local needed, freed = used + n - capacity, 0
    for j = 1, #live, 2 do
      freed = freed + units_of(live[j])
      if freed >= needed - 1e-9 then wait = tonumber(live[j + 1]) + period - now break end
    end
  end
  return math.max(wait, math.max(tat, now) + (n - capacity) * period / limit - now, 0)
end
"""

_LINES = """
local function place_of(units, name)  -- units, member of a waiter in line (nil when it is not)
  local entry = redis.call('HGET', units, name)
  if not entry then return nil end
  local n, member = string.match(entry, '^([^|]+)|(.+)$')
  return tonumber(n), member
end
local function leave_line(prefix, key, name)
  local units = prefix .. 'u:' .. key
  local _, member = place_of(units, name)
  if member then
    redis.call('ZREM', prefix .. 'o:' .. key, member)
    redis.call('ZREM', prefix .. 's:' .. key, name)
    redis.call('HDEL', units, name)
    if redis.call('EXISTS', prefix .. 'o:' .. key) == 0 then redis.call('SREM', prefix .. 'keys', key) end
  end
end
"""

# ARGV: grants key prefix, templated-state key prefix, line key prefix, waiter ('' for none),
# grace ms, priority, then (key, units, limit key) triples -> {'ok'} | {'wait', key, ms} |
# {'too_large', key}. A key under its own limit keeps its GCRA time and window sum in the shared
# hashes; a key under a template's, in a hash of its own that expires, with its grants, once it
# could hold nothing back (its GCRA time and every grant past). A key's line (take_units in
# engine/ports/ratelimits.py) is three structures under the line prefix: `o:<key>`, a zset of
# score 0 whose members `<2^31 - 1 - priority, 10 digits><first ask ms, 15 digits><arrival (the
# grant counter), 15 digits>|<waiter>` sort it by priority, then first ask, then arrival within a
# ms; `u:<key>`, a hash waiter -> `<units>|<its member>`; `s:<key>`, a zset waiter -> its turn
# plus the grace, when it is dropped. `keys` is the set of keys that have a line (a line that
# expired unused leaves its key there until a reader of the set drops it). `ahead:<template>`,
# under the line prefix, is a zset of the template's keys whose GCRA time is ahead of now, scored
# by it, so that a change of the template rescales what each of them was granted (PUT_LIMIT).
TAKE_UNITS = (
    _COMMON
    + _LINES
    + """
local LINE_READ = 256
local now = now_ms()
local plan = {}
local longest, who = 0, ''
local waiter, grace, priority = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
-- the units the live waiters ahead of `waiter` wait for (when it is not in line, of those it
-- would stand behind), read for the first LINE_READ of them (those further back are counted at
-- the asker's units)
local function ahead(key, n)
  local line, stale, units = ARGV[3] .. 'o:' .. key, ARGV[3] .. 's:' .. key, ARGV[3] .. 'u:' .. key
  local gone = redis.call('ZRANGEBYSCORE', stale, '-inf', now, 'LIMIT', 0, 1000)
  for _, name in ipairs(gone) do
    local _, member = place_of(units, name)
    if member then redis.call('ZREM', line, member) end
  end
  if #gone > 0 then
    redis.call('ZREM', stale, unpack(gone))
    redis.call('HDEL', units, unpack(gone))
  end
  local count
  local _, mine = place_of(units, waiter)
  if mine then
    count = redis.call('ZRANK', line, mine)
  else  -- behind those of its priority that asked first, in this same ms too
    local first = string.format('%010.0f%015.0f', 2147483647 - priority, math.floor(now))
    count = redis.call('ZLEXCOUNT', line, '-', '(' .. first .. '\\255')
  end
  if count == 0 then return 0 end
  local names = {}
  for i, member in ipairs(redis.call('ZRANGE', line, 0, math.min(count, LINE_READ) - 1)) do
    names[i] = string.match(member, '|(.+)$')
  end
  local total = 0
  for _, entry in ipairs(redis.call('HMGET', units, unpack(names))) do
    total = total + (tonumber(entry and string.match(entry, '^([^|]+)|') or nil) or n)
  end
  return total + math.max(count - LINE_READ, 0) * n
end
-- (a line nobody asks of any more expires once every place in it would have been dropped)
local function wait_in_line(key, n, turn)
  local line, stale, units = ARGV[3] .. 'o:' .. key, ARGV[3] .. 's:' .. key, ARGV[3] .. 'u:' .. key
  local _, member = place_of(units, waiter)
  if not member then
    local arrival = redis.call('INCR', KEYS[4])  -- orders those of one priority and one ms
    member = string.format('%010.0f%015.0f%015.0f', 2147483647 - priority, math.floor(now), arrival) .. '|' .. waiter
    redis.call('ZADD', line, 0, member)
    redis.call('SADD', ARGV[3] .. 'keys', key)  -- the keys with a line (a template's change finds them)
  end
  redis.call('HSET', units, waiter, n .. '|' .. member)
  redis.call('ZADD', stale, turn + grace, waiter)
  local keep = math.ceil(math.min(turn + grace - now, 2592000000)) + 1000  -- at most 30 days
  for _, k in ipairs({line, stale, units}) do
    if redis.call('PTTL', k) < keep then redis.call('PEXPIRE', k, keep) end
  end
end
for i = 7, #ARGV, 3 do
  local key, n, limit_key = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local limit, period, burst = definition(limit_key)
  if limit then
    local capacity = limit + burst
    if n > capacity + 1e-9 then return {'too_large', key} end
    local grants = ARGV[1] .. key
    local templated = limit_key ~= key
    local state = ARGV[2] .. key
    local tat, used
    if templated then
      local s = redis.call('HMGET', state, 't', 'w')
      tat, used = tonumber(s[1] or '0'), tonumber(s[2] or '0')
      local old = redis.call('ZRANGEBYSCORE', grants, '-inf', now - period)
      if #old > 0 then
        for _, m in ipairs(old) do used = used - units_of(m) end
        redis.call('ZREMRANGEBYSCORE', grants, '-inf', now - period)
        if used < 1e-9 then used = 0 end
        redis.call('HSET', state, 'w', used)
        redis.call('PEXPIRE', state, math.ceil(math.max(tat - now, 0) + period) + 1000)
      end
    else
      tat = tonumber(redis.call('HGET', KEYS[2], key) or '0')
      used = window(key, grants, period, now)
    end
    -- room is left for the units of the calls waiting ahead of this one
    local needed = n
    if waiter ~= '' then needed = n + ahead(key, n) end
    local live = {}
    if used + needed > capacity + 1e-9 then live = redis.call('ZRANGE', grants, 0, -1, 'WITHSCORES') end
    local wait = wait_for(live, used, needed, limit, period, burst, tat, now)
    local interval = period / limit
    tat = math.max(tat, now)
    if wait > 0.001 then
      if waiter ~= '' then wait_in_line(key, n, now + wait) end
      if wait > longest then longest, who = wait, key end
    else
      table.insert(plan, {key, n, tat + n * interval, grants, used, templated, state, period, limit_key})
    end
  end
end
if longest > 0 then return {'wait', who, tostring(longest)} end
for _, p in ipairs(plan) do
  if waiter ~= '' then leave_line(ARGV[3], p[1], waiter) end
  redis.call('ZADD', p[4], now, redis.call('INCR', KEYS[4]) .. '|' .. p[2])
  if p[6] then
    local ttl = math.ceil(math.max(p[3] - now, 0) + p[8]) + 1000
    redis.call('HSET', p[7], 't', tostring(p[3]), 'w', tostring(p[5] + p[2]))
    redis.call('PEXPIRE', p[7], ttl)
    redis.call('PEXPIRE', p[4], ttl)
    local ahead_of = ARGV[3] .. 'ahead:' .. p[9]
    redis.call('ZREMRANGEBYSCORE', ahead_of, '-inf', now)  -- those back at now need no rescale
    redis.call('ZADD', ahead_of, p[3], p[1])
    if redis.call('PTTL', ahead_of) < ttl then redis.call('PEXPIRE', ahead_of, ttl) end
  else
    redis.call('HSET', KEYS[2], p[1], tostring(p[3]))
    redis.call('HSET', KEYS[3], p[1], tostring(p[5] + p[2]))
    redis.call('PERSIST', p[4])  -- a key that had a template's limit until it got its own
  end
end
return {'ok'}
"""
)

# ARGV: line key prefix, waiter, then keys: the waiter waits no more (cancelled, timed out), out
# of the line of each key
LEAVE_LINES = (
    _LINES
    + """
for i = 3, #ARGV do leave_line(ARGV[1], ARGV[i], ARGV[2]) end
return 0
"""
)

# ARGV: grants key prefix -> {key, definition, available, ...} for every limit
LIST_LIMITS = (
    _COMMON
    + """
local now = now_ms()
local found = {}
for i = 2, #ARGV do
  local key = ARGV[i]
  local limit, period, burst = definition(key)
  if limit then  -- deleted since its key was listed: left out
    local capacity = limit + burst
    local used = window(key, ARGV[1] .. key, period, now)
    local tat = math.max(tonumber(redis.call('HGET', KEYS[2], key) or '0'), now)
    local by_gcra = capacity - (tat - now) / (period / limit)
    local room = math.max(0, math.min(by_gcra, capacity - used))
    table.insert(found, key)
    table.insert(found, redis.call('HGET', KEYS[1], key))
    table.insert(found, tostring(room))
  end
end
return found
"""
)

# ARGV: grants key prefix, templated-state key prefix, key, limit key, line key prefix ->
# {definition, available, ms until one unit (-1: never), calls in line} of the limit key's limit
# for `key`, or {} when it has none; reads only (a grant older than the window is left for the
# next take to drop, and not counted, as is a waiter past its grace)
READ_LIMIT = (
    _COMMON
    + """
local now = now_ms()
local key, limit_key = ARGV[3], ARGV[4]
local limit, period, burst = definition(limit_key)
if not limit then return {} end
local tat
if limit_key ~= key then
  tat = tonumber(redis.call('HGET', ARGV[2] .. key, 't') or '0')
else
  tat = tonumber(redis.call('HGET', KEYS[2], key) or '0')
end
local live = redis.call('ZRANGEBYSCORE', ARGV[1] .. key, '(' .. (now - period), '+inf', 'WITHSCORES')
local used = 0
for j = 1, #live, 2 do used = used + units_of(live[j]) end
local capacity = limit + burst
local interval = period / limit
local by_gcra = capacity - (math.max(tat, now) - now) / interval
local room = math.max(0, math.min(by_gcra, capacity - used))
local next_unit = -1  -- never: the limit cannot grant one unit
if capacity >= 1 - 1e-9 then next_unit = wait_for(live, used, 1, limit, period, burst, tat, now) end
local waiting = redis.call('ZCOUNT', ARGV[5] .. 's:' .. key, '(' .. now, '+inf')
return {redis.call('HGET', KEYS[1], limit_key), tostring(room), tostring(next_unit), waiting}
"""
)


# KEYS as above; ARGV: key, its definition (`limit|period ms|burst`), the templated-state key
# prefix, the zset of a template's keys ahead ('' for a plain key) -> 1. A limit put over one
# the key had: what was granted under the old one counts under the new one, so its GCRA time, when
# ahead of now, is as far ahead as those units take at the new pace (raised: waiting calls go
# sooner; lowered: later).
PUT_LIMIT = (
    _COMMON
    + """
local limit, period = definition(ARGV[1])
if limit then
  local now = now_ms()
  local new_limit, new_period = string.match(ARGV[2], '^([^|]+)|([^|]+)|')
  local scale = (tonumber(new_period) / tonumber(new_limit)) / (period / limit)
  local tat = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
  if tat > now then redis.call('HSET', KEYS[2], ARGV[1], now + (tat - now) * scale) end
  if ARGV[4] ~= '' then  -- a template: each of its keys ahead keeps its GCRA time in its state hash
    redis.call('ZREMRANGEBYSCORE', ARGV[4], '-inf', now)
    for _, key in ipairs(redis.call('ZRANGE', ARGV[4], 0, -1)) do
      local state = ARGV[3] .. key
      tat = tonumber(redis.call('HGET', state, 't') or '0')
      if tat > now then
        local rescaled = now + (tat - now) * scale
        redis.call('HSET', state, 't', tostring(rescaled))
        redis.call('ZADD', ARGV[4], rescaled, key)
      end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)
