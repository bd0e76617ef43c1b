"""The Lua scripts of the Redis task records (tasks.py). Each touches the keys of one partition
only (one slot) and is safe to run twice: a reply lost to a dropped connection is answered by
running it again."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_server.state.redis.fair_lua import FAIR
from mcp_server.state.redis.status_lua import MOVE_STATUS
from mcp_server.state.redis.waits_lua import PUT_WAIT

# KEYS: header, steps, order, events, values, leases, ends (finished tasks by end time), cancel
#       requests, signals, waits, due times, signals pending, queue
# ARGV: token, live, status, terminal (0/1), retention ms, backstop ms, index prefix, task_id,
#       waiting (0/1), due ms (0: none), the prefix of the index of waits for events, #steps,
#       then (index, path, record) triples, #values, then
#       (digest, value) pairs, #waits, then (path, record or '' once it stopped) pairs, #signals
#       taken in, then (index, '<sequence>|<step>') pairs, then (sequence, event) pairs
CHECKPOINT = (
    MOVE_STATUS
    + FAIR
    + PUT_WAIT
    + """
local head = KEYS[1]
if redis.call('HGET', head, 'tok') ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end
if ARGV[3] == '%COMPLETED%' then
  -- a cancel request stored before the run's end: the run ends CANCELLED instead (nothing written)
  local cancel = redis.call('HGET', head, 'cx')
  if cancel then return redis.error_reply('CANCEL_REQUESTED ' .. cancel) end
end
local fields = redis.call('HMGET', head, 'st', 'ow', 'wf', 'ct', 'seq')
redis.call('HSET', head, 'v', ARGV[2], 'st', ARGV[3])
move_status(ARGV[7], ARGV[8], fields[1], ARGV[3], fields[2], fields[3], fields[4])
if fields[1] ~= ARGV[3] and ARGV[3] ~= ST_PENDING and ARGV[3] ~= ST_RUNNING then
  -- it stops counting against its concurrency key's cap (it ends, or waits)
  if ARGV[4] == '1' then
    local group = redis.call('HGET', head, 'fg')
    if group then redis.call('SREM', KEYS[13] .. ':m:' .. group, ARGV[8]) end
  end
  fair_release(KEYS[13], head)
end
local i = 13
for _ = 1, tonumber(ARGV[12]) do
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
local waits = tonumber(ARGV[i])
i = i + 1
for _ = 1, waits do
  put_wait(KEYS[10], ARGV[11], ARGV[8], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local taken = tonumber(ARGV[i])
i = i + 1
if taken > 0 then
  local through = tonumber(redis.call('HGET', KEYS[9], 'tk') or '0')
  for _ = 1, taken do
    redis.call('HSET', KEYS[9], 's:' .. ARGV[i], ARGV[i + 1])
    if tonumber(ARGV[i]) > through then through = tonumber(ARGV[i]) end
    i = i + 2
  end
  redis.call('HSET', KEYS[9], 'tk', through)
  if through >= tonumber(redis.call('HGET', KEYS[9], 'n') or '0') then redis.call('ZREM', KEYS[12], ARGV[8]) end
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
  redis.call('ZADD', KEYS[7], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), ARGV[8])
  expire_task(head, tonumber(ARGV[5]) + tonumber(ARGV[6]))
elseif ARGV[9] == '1' then
  -- parked: no lease; a timer (if any) resumes it, and so do signals or a cancel request that came
  -- while it was being parked
  redis.call('ZREM', KEYS[6], ARGV[8])
  if ARGV[10] ~= '0' then
    redis.call('ZADD', KEYS[11], ARGV[10], ARGV[8])
  else
    redis.call('ZREM', KEYS[11], ARGV[8])
  end
  local signals = tonumber(redis.call('HGET', KEYS[9], 'n') or '0')
  local through = tonumber(redis.call('HGET', KEYS[9], 'tk') or '0')
  if signals > through or redis.call('HEXISTS', head, 'cx') == 1 then fair_push(KEYS[13], head) end
  redis.call('ZREM', KEYS[12], ARGV[8])
end
return 1
"""
).replace("%COMPLETED%", str(task_pb2.TASK_STATUS_COMPLETED))


# Removes one task with everything it holds: its index entries, its keys, its retention entry,
# its id in its queue group's sets (pruned lazily otherwise); reruns that share its values get
# their own copies of them. `retention` and `ends` are its partition's retention zsets (see
# layout.py), `prefix` the task key prefix, `idx` the index prefix, `queue` the partition's queue
# (see fair_lua).
_REMOVE_TASK = """
local function remove_task(retention, ends, prefix, idx, queue, task_id)
  local head = prefix .. task_id
  local f = redis.call('HMGET', head, 'st', 'ow', 'wf', 'fg', 'lb')
  if f[1] then
    local keys = {'a', 's:' .. f[1], 'o:' .. f[2], 'os:' .. f[1] .. ':' .. f[2], 'w:' .. f[3],
                  'ws:' .. f[1] .. ':' .. f[3]}
    for digest in string.gmatch(f[5] or '', '%x+') do keys[#keys + 1] = 'l:' .. digest end
    for _, key in ipairs(keys) do
      redis.call('ZREM', idx .. key, task_id)
    end
  end
  if f[4] then
    redis.call('SREM', queue .. ':r:' .. f[4], task_id)
    redis.call('SREM', queue .. ':m:' .. f[4], task_id)
  end
  for _, rerun in ipairs(redis.call('SMEMBERS', head .. ':b')) do
    local other = prefix .. rerun
    local links = redis.call('HGETALL', other .. ':vl')
    for j = 1, #links, 2 do
      if links[j + 1] == task_id then
        local data = redis.call('HGET', head .. ':v', links[j])
        if data then redis.call('HSET', other .. ':v', links[j], data) end
        redis.call('HDEL', other .. ':vl', links[j])
      end
    end
    local ttl = redis.call('PTTL', other)
    if ttl > 0 then redis.call('PEXPIRE', other .. ':v', ttl) end
  end
  for _, origin in ipairs(redis.call('HVALS', head .. ':vl')) do
    redis.call('SREM', prefix .. origin .. ':b', task_id)
  end
  local source = redis.call('HGET', head, 'ro')
  if source then redis.call('ZREM', prefix .. source .. ':r', task_id) end
  -- UNLINK: a large task's keys are freed off the main thread (a 200k-step hash and a 100k-event
  -- stream held Redis 65 ms with DEL, 4 ms with UNLINK; a purge removes up to 500 tasks a script)
  redis.call('UNLINK', head, head .. ':s', head .. ':o', head .. ':e', head .. ':v', head .. ':g', head .. ':w',
             head .. ':vl', head .. ':b', head .. ':r', head .. ':c')
  redis.call('ZREM', retention, task_id)
  redis.call('ZREM', ends, task_id)
end
"""

# KEYS: retention, queue, ends; ARGV: now ms, task key prefix, index prefix, retention ms -> how
# many tasks were purged: those whose end is the retention ago (ends), and those whose purge time,
# fixed when they ended (before ends existed), has come (retention)
PURGE_FINISHED = (
    _REMOVE_TASK
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[4]), 'LIMIT', 0, 500)
if #due < 500 then
  for _, task_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500 - #due)) do
    table.insert(due, task_id)
  end
end
for _, task_id in ipairs(due) do
  remove_task(KEYS[1], KEYS[3], ARGV[2], ARGV[3], KEYS[2], task_id)
end
return #due
"""
)

# KEYS: retention, queue, the task's header, ends; ARGV: task key prefix, index prefix, task id, then
# the finished statuses -> 1 (removed), 0 (no such task), -1 (not finished: nothing removed)
DELETE_FINISHED = (
    _REMOVE_TASK
    + """
local status = redis.call('HGET', KEYS[3], 'st')
if not status then return 0 end
for i = 4, #ARGV do
  if status == ARGV[i] then
    remove_task(KEYS[1], KEYS[4], ARGV[1], ARGV[2], KEYS[2], ARGV[3])
    return 1
  end
end
return -1
"""
)


# KEYS: values, value links; ARGV: the task key prefix, then digests -> for each, its value (or false):
# the task's own, else the one it shares with the task its link names (see CREATE_RERUN)
READ_LINKED = """
local found = {}
for i = 2, #ARGV do
  local data = redis.call('HGET', KEYS[1], ARGV[i])
  if not data then
    local origin = redis.call('HGET', KEYS[2], ARGV[i])
    if origin then data = redis.call('HGET', ARGV[1] .. origin .. ':v', ARGV[i]) end
  end
  found[i - 1] = data or false
end
return found
"""


# KEYS: events; ARGV: the first id not to read ('(0-N'), the most events, the most bytes -> the
# events' data in order, ending after the one that takes them to that many bytes (read 16 at a
# time, so that no more than that is read however large the events are)
READ_EVENTS = """
local found, bytes, start, left = {}, 0, ARGV[1], tonumber(ARGV[2])
while left > 0 do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(left, 16))
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then
        table.insert(found, fields[i + 1])
        bytes = bytes + #fields[i + 1]
      end
    end
    left = left - 1
    if bytes >= tonumber(ARGV[3]) then return found end
  end
  start = '(' .. entries[#entries][1]
end
return found
"""

# KEYS: step order, step records; ARGV: first index, how many -> {index, path, record, ...} of the
# records from that index on, in order, up to the first index that has none
READ_STEPS = """
local found = {}
for i = tonumber(ARGV[1]), tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1 do
  local path = redis.call('HGET', KEYS[1], i)
  if not path then break end
  local record = redis.call('HGET', KEYS[2], path)
  if record then
    table.insert(found, i)
    table.insert(found, path)
    table.insert(found, record)
  end
end
return found
"""
