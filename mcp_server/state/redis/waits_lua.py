"""The Lua scripts of signals and timers on Redis (waits.py). Each touches the keys of one
partition only (one slot)."""

from __future__ import annotations

from mcp_server.state.redis.fair_lua import FAIR

# put_wait(waits, prefix, task_id, path, record): write the wait at `path` ('' : it stopped
# waiting) and keep the partition's index of waits for events (prefix: layout.event_waits) in
# step: a wait whose record carries a key (a fifth part) and has nothing assigned is listed there
PUT_WAIT = """
local function event_wait_index(prefix, record)
  local signal, assigned, key = string.match(record, '^([^|]*)|[^|]*|[^|]*|([^|]*)|(.*)$')
  if signal == nil or assigned ~= '0' then return nil end
  return prefix .. signal .. '|' .. key
end
local function put_wait(waits, prefix, task_id, path, record)
  local old = redis.call('HGET', waits, path)
  if old then
    local index = event_wait_index(prefix, old)
    if index then redis.call('SREM', index, task_id .. '|' .. path) end
  end
  if record == '' then
    redis.call('HDEL', waits, path)
    return
  end
  redis.call('HSET', waits, path, record)
  local index = event_wait_index(prefix, record)
  if index then redis.call('SADD', index, task_id .. '|' .. path) end
end
"""

# KEYS: header, signals, events, queue, signals pending, waits, leases, due times
# ARGV: task_id, request_id, the stored request, the sequence read (compare-and-set), the event's
#       sequence, the event, the live part with it, the step it goes to, that step's new wait
#       record (''), now ms, waiting, the holder to lease a waiting task to ('' to queue it), its
#       lease expiry ms, the channel to nudge the holder on, the most signals the task may have
#       and the most bytes of them (0: no limit), the prefix of the index of waits for events,
#       then the terminal statuses
# -> {'duplicate', index, request, '<sequence>|<step>'} | {'finished'} | {'full'} | {'full of bytes'}
#    | {'appended', index}
#    | {'stale'} | {'delivered', index} | {'leased', index, fixed, live, token}
SEND_SIGNAL = (
    FAIR
    + PUT_WAIT
    + """
if ARGV[2] ~= '' then
  local seen = redis.call('HGET', KEYS[2], 'r:' .. ARGV[2])
  if seen then
    return {'duplicate', seen, redis.call('HGET', KEYS[2], seen), redis.call('HGET', KEYS[2], 's:' .. seen) or ''}
  end
end
local f = redis.call('HMGET', KEYS[1], 'st', 'seq')
if not f[1] then return {'finished'} end
for i = 18, #ARGV do if f[1] == ARGV[i] then return {'finished'} end end
local kept = redis.call('HMGET', KEYS[2], 'n', 'b')
local count = tonumber(kept[1] or '0')
if ARGV[15] ~= '0' and count >= tonumber(ARGV[15]) then return {'full'} end
local bytes = tonumber(kept[2] or '0') + #ARGV[3]
if ARGV[16] ~= '0' and bytes > tonumber(ARGV[16]) then return {'full of bytes'} end
local through = tonumber(redis.call('HGET', KEYS[2], 'tk') or '0')
-- held by a replica, or with signals before it not taken in: the run that holds it (or the next
-- run) takes it in, in order
local held = redis.call('ZSCORE', KEYS[7], ARGV[1]) or count > through
if not held and f[2] ~= ARGV[4] then return {'stale'} end
local index = count + 1
redis.call('HSET', KEYS[2], 'n', index, 'b', bytes, index, ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'r:' .. ARGV[2], index) end
if held then
  redis.call('ZADD', KEYS[5], ARGV[10], ARGV[1])
  -- the nudge is best-effort: where it cannot be published (an ACL without pub/sub) the signal
  -- is still appended, and the holder's poll of pending signals takes it in
  redis.pcall('PUBLISH', ARGV[14], ARGV[1])
  return {'appended', index}
end
redis.call('HSET', KEYS[2], 'tk', index, 's:' .. index, ARGV[5] .. '|' .. ARGV[8])
redis.call('XADD', KEYS[3], '0-' .. ARGV[5], 'e', ARGV[6])
redis.call('HSET', KEYS[1], 'seq', ARGV[5], 'v', ARGV[7])
if ARGV[9] ~= '' then put_wait(KEYS[6], ARGV[17], ARGV[1], ARGV[8], ARGV[9]) end
if f[1] == ARGV[11] then
  -- resumed where the signal came (leased there, never queued), unless its concurrency key is full
  if ARGV[12] ~= '' and not fair_full(KEYS[4], KEYS[1], string.sub(KEYS[1], 1, -#ARGV[1] - 1), KEYS[7]) then
    fair_remove(KEYS[4], KEYS[1])
    fair_hold(KEYS[4], KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[8], ARGV[1])
    local token = redis.call('HINCRBY', KEYS[1], 'tok', 1)
    redis.call('HSET', KEYS[1], 'by', ARGV[12])
    redis.call('ZADD', KEYS[7], ARGV[13], ARGV[1])
    local parts = redis.call('HMGET', KEYS[1], 'f', 'v')
    return {'leased', index, parts[1], parts[2], token}
  end
  fair_push(KEYS[4], KEYS[1])
end
return {'delivered', index}
"""
)

# KEYS: due times, queue; ARGV: now ms, task key prefix, waiting, pending, retake ms -> {how many
# went to the queue, then the ids of queued tasks past their queue deadline}. Those stay in the due
# times, `retake ms` on: their sweep's answer may be lost, or its cancel refused, and a task no
# sweep cancels would wait in the queue past its deadline until a claim came to it. Once cancelled
# (or started), the next look takes it off.
RELEASE_DUE = (
    FAIR
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
local released = {0}
for _, task_id in ipairs(due) do
  local head = ARGV[2] .. task_id
  local status = redis.call('HGET', head, 'st')
  if status == ARGV[3] then
    redis.call('ZREM', KEYS[1], task_id)
    fair_push(KEYS[2], head)
    released[1] = released[1] + 1
  elseif status == ARGV[4] then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[5]), task_id)
    table.insert(released, task_id)
  else
    redis.call('ZREM', KEYS[1], task_id)
  end
end
return released
"""
)


# KEYS: the partition's due times; ARGV: now (ms), the task key prefix, WAITING, then task ids
# -> how many were made due now (those parked with a later due time)
RESUME_SOON = """
local made = 0
for i = 4, #ARGV do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due and tonumber(due) > tonumber(ARGV[1]) and redis.call('HGET', ARGV[2] .. ARGV[i], 'st') == ARGV[3] then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    made = made + 1
  end
end
return made
"""


# KEYS: sets (on one node: the partitions' sets of waits for one event and key); ARGV: a cursor for
# each -> {cursor, members, cursor, members, ...}: one SSCAN page of each, or {} when none of the
# sets exists (what almost every publish finds: one command, not one per set) (read only)
SCAN_SETS = """
if redis.call('EXISTS', unpack(KEYS)) == 0 then return {} end
local out = {}
for i, key in ipairs(KEYS) do
  local page = redis.call('SSCAN', key, ARGV[i], 'COUNT', 500)
  out[#out + 1] = page[1]
  out[#out + 1] = page[2]
end
return out
"""
