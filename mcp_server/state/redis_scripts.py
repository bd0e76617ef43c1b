"""The Lua scripts of the Redis store. Each touches the keys of one partition only (one slot),
and each is safe to run twice: a reply lost to a dropped connection is answered by running it
again (see RedisStore.open). Key names follow redis_layout.py; the status indexes a script
moves a task between are named inside the script from the index prefix it is given."""

from __future__ import annotations

# Moving a task between the status indexes, shared by the scripts that change a status.
_MOVE_STATUS = """
local function move_status(idx, task_id, old, new, owner, workflow, score)
  if old == new then return end
  redis.call('ZREM', idx .. 's:' .. old, task_id)
  redis.call('ZREM', idx .. 'os:' .. old .. ':' .. owner, task_id)
  redis.call('ZREM', idx .. 'ws:' .. old .. ':' .. workflow, task_id)
  redis.call('ZADD', idx .. 's:' .. new, score, task_id)
  redis.call('ZADD', idx .. 'os:' .. new .. ':' .. owner, score, task_id)
  redis.call('ZADD', idx .. 'ws:' .. new .. ':' .. workflow, score, task_id)
end
local function expire_task(head, ms)
  for _, suffix in ipairs({'', ':s', ':o', ':e', ':v'}) do redis.call('PEXPIRE', head .. suffix, ms) end
end
"""

# KEYS: header, events, queue, values, leases, the six indexes (see Layout.indexes_of)
# ARGV: task_id, fixed, live, status, priority, owner, workflow, fingerprint, event,
#       holder ('' to queue the task), lease expiry ms, then digest, value pairs
# -> {1, token} created (token 0 when queued); {0, fingerprint} it exists already
CREATE_TASK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('HGET', KEYS[1], 'fp') or ''} end
local now = redis.call('TIME')
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
local member = string.format('%016d', micros) .. ':' .. ARGV[1]
redis.call('HSET', KEYS[1], 'f', ARGV[2], 'v', ARGV[3], 'st', ARGV[4], 'tok', 0, 'seq', 1, 'pr', ARGV[5],
           'ow', ARGV[6], 'wf', ARGV[7], 'ct', micros, 'fp', ARGV[8], 'qm', member)
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[9])
local token = 0
if ARGV[10] == '' then
  redis.call('ZADD', KEYS[3], -tonumber(ARGV[5]), member)
else  -- started at once by the replica that took the submission: leased, never queued
  token = 1
  redis.call('HSET', KEYS[1], 'tok', 1, 'by', ARGV[10])
  redis.call('ZADD', KEYS[5], ARGV[11], ARGV[1])
end
for i = 12, #ARGV, 2 do redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1]) end
for i = 6, #KEYS do redis.call('ZADD', KEYS[i], micros, ARGV[1]) end
return {1, token}
"""

# KEYS: header, steps, order, events, values, leases, retention, cancel requests
# ARGV: token, live, status, terminal (0/1), retention ms, backstop ms, index prefix, task_id,
#       #steps, then (index, path, record) triples, #values, then (digest, value) pairs,
#       then (sequence, event) pairs
CHECKPOINT = (
    _MOVE_STATUS
    + """
local head = KEYS[1]
if redis.call('HGET', head, 'tok') ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end
local fields = redis.call('HMGET', head, 'st', 'ow', 'wf', 'ct', 'seq')
redis.call('HSET', head, 'v', ARGV[2], 'st', ARGV[3])
move_status(ARGV[7], ARGV[8], fields[1], ARGV[3], fields[2], fields[3], fields[4])
local i = 10
for _ = 1, tonumber(ARGV[9]) do
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 3
end
local values = tonumber(ARGV[i])
i = i + 1
for _ = 1, values do
  redis.call('HSETNX', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 2
end
-- events already in the log were written by an earlier run of this same call: skip them
local last = tonumber(fields[5] or '0')
while i < #ARGV do
  local sequence = tonumber(ARGV[i])
  if sequence > last then
    redis.call('XADD', KEYS[4], '0-' .. ARGV[i], 'e', ARGV[i + 1])
    last = sequence
  end
  i = i + 2
end
redis.call('HSET', head, 'seq', last)
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[6], ARGV[8])
  redis.call('ZREM', KEYS[8], ARGV[8])
  local now = redis.call('TIME')
  local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[5])
  redis.call('ZADD', KEYS[7], due, ARGV[8])
  expire_task(head, tonumber(ARGV[5]) + tonumber(ARGV[6]))
end
return 1
"""
)

# KEYS: queue, leases
# ARGV: lease expiry ms, holder, task key prefix, how many, worst score to take (or '+inf'),
#       the statuses that may run (pending, running)
# -> {fixed, live, token, ...} for each task claimed
CLAIM_TASKS = """
local claimed = {}
while #claimed < 3 * tonumber(ARGV[4]) do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if #popped == 0 then break end
  if ARGV[5] ~= '+inf' and tonumber(popped[2]) > tonumber(ARGV[5]) then
    redis.call('ZADD', KEYS[1], popped[2], popped[1])
    break
  end
  local task_id = string.sub(popped[1], 18)
  local head = ARGV[3] .. task_id
  local status = redis.call('HGET', head, 'st')
  if status == ARGV[6] or status == ARGV[7] then
    local token = redis.call('HINCRBY', head, 'tok', 1)
    redis.call('HSET', head, 'by', ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[1], task_id)
    local parts = redis.call('HMGET', head, 'f', 'v')
    table.insert(claimed, parts[1])
    table.insert(claimed, parts[2])
    table.insert(claimed, token)
  end
end
return claimed
"""

# KEYS: leases; ARGV: expiry ms, task key prefix, then (task_id, token) pairs -> the task ids lost
RENEW_LEASES = """
local lost = {}
for i = 3, #ARGV, 2 do
  local task_id, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. task_id, 'tok') == token and redis.call('ZSCORE', KEYS[1], task_id) then
    redis.call('ZADD', KEYS[1], ARGV[1], task_id)
  else
    table.insert(lost, task_id)
  end
end
return lost
"""

# KEYS: leases, queue; ARGV: now ms, task key prefix, pending, running -> how many went back to the queue
RELEASE_EXPIRED = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
local n = 0
for _, task_id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], task_id)
  local fields = redis.call('HMGET', ARGV[2] .. task_id, 'st', 'qm', 'pr')
  if fields[1] == ARGV[3] or fields[1] == ARGV[4] then
    redis.call('ZADD', KEYS[2], -tonumber(fields[3]), fields[2])
    n = n + 1
  end
end
return n
"""

# KEYS: header, queue, events, retention
# ARGV: live, status, sequence, event, retention ms, backstop ms, index prefix, task_id,
#       the sequence the caller read (compare-and-set), pending
CANCEL_PENDING = (
    _MOVE_STATUS
    + """
local head = KEYS[1]
local fields = redis.call('HMGET', head, 'st', 'ow', 'wf', 'ct', 'seq', 'qm')
if fields[1] ~= ARGV[10] or fields[5] ~= ARGV[9] or not redis.call('ZSCORE', KEYS[2], fields[6]) then return 0 end
redis.call('ZREM', KEYS[2], fields[6])
redis.call('HSET', head, 'v', ARGV[1], 'st', ARGV[2], 'seq', ARGV[3])
move_status(ARGV[7], ARGV[8], fields[1], ARGV[2], fields[2], fields[3], fields[4])
redis.call('XADD', KEYS[3], '0-' .. ARGV[3], 'e', ARGV[4])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[5]), ARGV[8])
expire_task(head, tonumber(ARGV[5]) + tonumber(ARGV[6]))
return 1
"""
)

# KEYS: retention; ARGV: now ms, task key prefix, index prefix -> how many tasks were purged
PURGE_FINISHED = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
local idx = ARGV[3]
for _, task_id in ipairs(due) do
  local head = ARGV[2] .. task_id
  local f = redis.call('HMGET', head, 'st', 'ow', 'wf')
  if f[1] then
    local keys = {'a', 's:' .. f[1], 'o:' .. f[2], 'os:' .. f[1] .. ':' .. f[2], 'w:' .. f[3],
                  'ws:' .. f[1] .. ':' .. f[3]}
    for _, key in ipairs(keys) do
      redis.call('ZREM', idx .. key, task_id)
    end
  end
  redis.call('DEL', head, head .. ':s', head .. ':o', head .. ':e', head .. ':v')
  redis.call('ZREM', KEYS[1], task_id)
end
return #due
"""

# KEYS: the workflow's versions hash, the latest-version hash; ARGV: workflow_id
LATEST_WORKFLOW = """
local version = redis.call('HGET', KEYS[2], ARGV[1])
if not version then return nil end
return redis.call('HGET', KEYS[1], version)
"""

# KEYS: the workflow's versions hash, the latest-version hash; ARGV: workflow_id -> the version, or 0
LATEST_VERSION = """
local version = redis.call('HGET', KEYS[2], ARGV[1])
if version and redis.call('HEXISTS', KEYS[1], version) == 1 then return tonumber(version) end
return 0
"""

# KEYS: the registry hash; ARGV: (field, value) pairs -> the 0-based indexes of the pairs deleted:
# each only if its field still holds exactly that value (a registration renewed meanwhile stays)
REMOVE_UNCHANGED = """
local removed = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    table.insert(removed, (i - 1) / 2)
  end
end
return removed
"""

# ---- capacity (one slot, tag {cap}; see protocols/capacity.py for the rule) --------------------
_CAPACITY = """
local function parse(text)
  local t = {}
  for x in string.gmatch(text, '[^,]+') do t[#t + 1] = tonumber(x) end
  return t
end
local function give_back(id)
  local grant = redis.call('HGET', KEYS[2], id)
  if grant then
    local address, needs = string.match(grant, '^(.*)|(.*)$')
    local use = parse(redis.call('HGET', KEYS[6], address) or '0,0,0')
    local n = parse(needs)
    redis.call('HSET', KEYS[6], address, (use[1] - n[1]) .. ',' .. (use[2] - n[2]) .. ',' .. (use[3] - n[3]))
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
"""

# KEYS: grants (zset id -> expiry), grant data (id -> address|needs), waiters (zset rank), waiter
#       data (member -> expiry|needs|candidates), capacities (address -> c,m,g), in use (address -> c,m,g)
# ARGV: member (`<enqueued ms>:<id>`), id, -priority, needs, now ms, waiter expiry ms, grant expiry
#       ms, then (address, capacity) pairs of the candidates
# -> the address granted to this caller, or false
ACQUIRE_CAPACITY = (
    _CAPACITY
    + """
local now = tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do give_back(id) end
local mine = redis.call('HGET', KEYS[2], ARGV[2])
if mine then return string.match(mine, '^(.*)|') end
local candidates = {}
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  candidates[#candidates + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6] .. '|' .. ARGV[4] .. '|' .. table.concat(candidates, ';'))
local caps, use, blocked = {}, {}, {}
local function capacity(a)
  if caps[a] == nil then
    local c = redis.call('HGET', KEYS[5], a)
    caps[a] = c and parse(c) or false
  end
  return caps[a]
end
local function in_use(a)
  if use[a] == nil then use[a] = parse(redis.call('HGET', KEYS[6], a) or '0,0,0') end
  return use[a]
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local data = redis.call('HGET', KEYS[4], member)
  local expiry, needs_text, cands = nil, nil, nil
  if data then expiry, needs_text, cands = string.match(data, '^(.-)|(.-)|(.*)$') end
  if not data or tonumber(expiry) < now then
    redis.call('ZREM', KEYS[3], member)
    redis.call('HDEL', KEYS[4], member)
  else
    local needs = parse(needs_text)
    local best, best_share = nil, -1
    local mine_cands = {}
    for a in string.gmatch(cands, '[^;]+') do
      mine_cands[#mine_cands + 1] = a
      local cap = capacity(a)
      if cap and not blocked[a] then
        local u = in_use(a)
        local fits, share = true, 1.0
        for r = 1, 3 do
          if cap[r] > 0 then
            if needs[r] > 0 and u[r] + needs[r] > cap[r] then fits = false end
            local free = (cap[r] - u[r]) / cap[r]
            if free < share then share = free end
          end
        end
        if fits and share > best_share then best, best_share = a, share end
      end
    end
    if best then
      local u = in_use(best)
      use[best] = {u[1] + needs[1], u[2] + needs[2], u[3] + needs[3]}
      redis.call('HSET', KEYS[6], best, use[best][1] .. ',' .. use[best][2] .. ',' .. use[best][3])
      local id = string.match(member, '^[^:]*:(.*)$')
      redis.call('HSET', KEYS[2], id, best .. '|' .. needs_text)
      redis.call('ZADD', KEYS[1], ARGV[7], id)
      redis.call('ZREM', KEYS[3], member)
      redis.call('HDEL', KEYS[4], member)
    else
      for _, a in ipairs(mine_cands) do blocked[a] = true end
    end
  end
end
mine = redis.call('HGET', KEYS[2], ARGV[2])
if mine then return string.match(mine, '^(.*)|') end
return false
"""
)

# KEYS: as ACQUIRE_CAPACITY; ARGV: member, id -> gives back a grant, or withdraws a waiter; returns
# how many calls wait now
RELEASE_CAPACITY = (
    _CAPACITY
    + """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
give_back(ARGV[2])
return redis.call('ZCARD', KEYS[3])
"""
)

# KEYS: grants, grant data; ARGV: expiry ms, ids -> keeps the grants alive
RENEW_CAPACITY = """
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) end
end
return 1
"""
