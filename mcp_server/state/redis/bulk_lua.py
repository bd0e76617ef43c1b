"""The Lua scripts of bulk actions on Redis (bulk.py). Every key shares the slot {bulk}: an action's
hash `P{bulk}:a:<id>` (o owner, d data, c cursor, v version, r running 1/0, a admin 1/0, q request
id), `P{bulk}:due` (running ids -> due ms), `P{bulk}:ended` (ended ids -> end ms), `P{bulk}:ids`
and `P{bulk}:o:<owner>` (ids, lex order), `P{bulk}:run:<owner>` (the owner's running ids) and
`P{bulk}:req:<owner>` (request id -> action id)."""

from __future__ import annotations

# KEYS: action, due, ids, owner's ids, owner's running, owner's requests; ARGV: id, owner, data,
#       cursor, admin, request id, now ms, most running, action key prefix
#       -> {1} created, {0, id, fields} made before by this request, {-1} too many running
CREATE = """
if ARGV[6] ~= '' then
  local earlier = redis.call('HGET', KEYS[6], ARGV[6])
  if earlier then
    local fields = redis.call('HGETALL', ARGV[9] .. earlier)
    if #fields > 0 then return {0, earlier, fields} end
  end
end
if redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[8]) then return {-1} end
redis.call('HSET', KEYS[1], 'o', ARGV[2], 'd', ARGV[3], 'c', ARGV[4], 'v', 1, 'r', 1, 'a', ARGV[5], 'q', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[6], ARGV[6], ARGV[1]) end
return {1}
"""

# KEYS: due; ARGV: now ms, lease ms, how many, action key prefix -> {id, fields, ...} of each claimed
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local found = {}
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
  redis.call('HINCRBY', ARGV[4] .. id, 'v', 1)
  table.insert(found, id)
  table.insert(found, redis.call('HGETALL', ARGV[4] .. id))
end
return found
"""

# KEYS: action, due, ended; ARGV: id, version read, data, cursor, running 1/0, due ms, now ms,
#       owners' running prefix -> 1 saved, 0 the version moved (or the action is gone)
SAVE = """
local version = redis.call('HGET', KEYS[1], 'v')
if not version or tonumber(version) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[3], 'c', ARGV[4], 'r', ARGV[5], 'v', tonumber(version) + 1)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
  redis.call('SREM', ARGV[8] .. redis.call('HGET', KEYS[1], 'o'), ARGV[1])
end
return 1
"""

# KEYS: ended, ids; ARGV: ended before ms, how many, action key prefix, owners' ids prefix,
#       owners' requests prefix -> how many were deleted
PURGE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local owner = redis.call('HGET', key, 'o')
  if owner then
    redis.call('ZREM', ARGV[4] .. owner, id)
    local request = redis.call('HGET', key, 'q')
    if request ~= '' and redis.call('HGET', ARGV[5] .. owner, request) == id then
      redis.call('HDEL', ARGV[5] .. owner, request)
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return #ids
"""
