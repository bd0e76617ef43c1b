"""The Lua scripts of schedules on Redis (schedules.py). Every schedule key shares the slot
{sch}: a schedule's hash `P{sch}:s:<id>` (d definition, v version, o owner, c created ms,
r runs, k skipped, m missed, l last fire ms, b buffered fire ms, rr recent runs as JSON, lt the newest
run that started a task as JSON [fire, task] (kept however many skips push it out of rr), f refused,
rf refusals as JSON),
`P{sch}:due` (zset id -> due ms), `P{sch}:ids` and `P{sch}:o:<owner>` (ids, lex order)."""

from __future__ import annotations

# KEYS: schedule, due, ids, owner's ids; ARGV: id, owner, data, created ms, due ms (-1: none) -> 1 created, 0 taken
CREATE_SCHEDULE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[3], 'v', 1, 'o', ARGV[2], 'c', ARGV[4], 'r', 0, 'k', 0, 'm', 0, 'l', 0, 'b', 0,
           'rr', '[]')
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
if tonumber(ARGV[5]) >= 0 then redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1]) end
return 1
"""

# KEYS: schedule, due; ARGV: id, data, due ms (-1: none), last fire ms ('' to keep) -> 1, or 0 if gone
UPDATE_SCHEDULE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'v', 1)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'l', ARGV[4]) end
if tonumber(ARGV[3]) >= 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""

# KEYS: schedule, due, ids; ARGV: id, owner ids prefix -> 1 deleted, 0 not found
DELETE_SCHEDULE = """
local owner = redis.call('HGET', KEYS[1], 'o')
if not owner then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', ARGV[2] .. owner, ARGV[1])
return 1
"""

# KEYS: due; ARGV: now ms, lease ms, how many, schedule key prefix -> {id, fields..., ...} of each claimed
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local found = {}
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
  table.insert(found, id)
  table.insert(found, redis.call('HGETALL', ARGV[4] .. id))
end
return found
"""

# KEYS: schedule, due; ARGV: id, started JSON [[fire, task], ...], skipped JSON [fire, ...], missed,
#       last fire ms ('' to keep), buffered ms ('' to keep), due ms ('' to keep, -1: none), version,
#       how many recent runs to keep, refused JSON [[fire, why], ...]
RECORD_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local started = cjson.decode(ARGV[2])
local skipped = cjson.decode(ARGV[3])
local recent = cjson.decode(redis.call('HGET', KEYS[1], 'rr') or '[]')
for _, run in ipairs(started) do table.insert(recent, run) end
for _, fire in ipairs(skipped) do table.insert(recent, {fire, ''}) end
local refused = cjson.decode(ARGV[10] or '[]')
for _, refusal in ipairs(refused) do table.insert(recent, {refusal[1], ''}) end
local function newest(list)
  table.sort(list, function(a, b) return a[1] > b[1] end)
  local kept = {}
  for i = 1, math.min(#list, tonumber(ARGV[9])) do kept[i] = list[i] end
  return #kept > 0 and cjson.encode(kept) or '[]'
end
redis.call('HSET', KEYS[1], 'rr', newest(recent))
if #started > 0 then  -- the newest run that started a task, whatever the recent list drops
  local latest = cjson.decode(redis.call('HGET', KEYS[1], 'lt') or '[0, ""]')
  for _, run in ipairs(started) do
    if run[1] >= latest[1] then latest = run end
  end
  redis.call('HSET', KEYS[1], 'lt', cjson.encode(latest))
end
if #refused > 0 then
  local refusals = cjson.decode(redis.call('HGET', KEYS[1], 'rf') or '[]')
  for _, refusal in ipairs(refused) do table.insert(refusals, refusal) end
  redis.call('HSET', KEYS[1], 'rf', newest(refusals))
  redis.call('HINCRBY', KEYS[1], 'f', #refused)
end
redis.call('HINCRBY', KEYS[1], 'r', #started)
redis.call('HINCRBY', KEYS[1], 'k', #skipped)
redis.call('HINCRBY', KEYS[1], 'm', tonumber(ARGV[4]))
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'l', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'b', ARGV[6]) end
if ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'v') == ARGV[8] then
  if tonumber(ARGV[7]) >= 0 then
    redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
  else
    redis.call('ZREM', KEYS[2], ARGV[1])
  end
end
return 1
"""
