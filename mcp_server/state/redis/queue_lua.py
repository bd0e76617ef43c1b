"""The Lua scripts of the Redis queue (queue.py). Each touches the keys of one partition only
(one slot) and is safe to run twice: a reply lost to a dropped connection is answered by
running it again."""

from __future__ import annotations

from mcp_server.state.redis.fair_lua import FAIR
from mcp_server.state.redis.status_lua import MOVE_STATUS

# The body both creates share: the header, the first event, queued or leased at once.
# KEYS[1..5] and ARGV[1..15] as CREATE_TASK's, `qb` the bytes the submission stores (its fixed
# part and its values: state/common.queued_bytes); sets `micros` and `token`.
_STORE_TASK = """
local now = redis.call('TIME')
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
local member = string.format('%016d', micros) .. ':' .. ARGV[1]
redis.call('HSET', KEYS[1], 'f', ARGV[2], 'v', ARGV[3], 'st', ARGV[4], 'tok', 0, 'seq', 1, 'pr', ARGV[5],
           'ow', ARGV[6], 'wf', ARGV[7], 'ct', micros, 'fp', ARGV[8], 'qm', member, 'fg', ARGV[12], 'cap', ARGV[13],
           'qb', qb)
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[9])
if tonumber(ARGV[13]) > 0 then redis.call('SADD', KEYS[3] .. ':m:' .. ARGV[12], ARGV[1]) end
local token = 0
if ARGV[10] == '' or fair_full(KEYS[3], KEYS[1], ARGV[14], KEYS[5]) then
  fair_push(KEYS[3], KEYS[1])
  -- queued with a queue deadline: that is its due time (the partition's due times, Layout.due,
  -- are its queue key with `d` for `q`); a claim takes it off, RELEASE_DUE hands it back past it
  if ARGV[15] ~= '' then redis.call('ZADD', string.sub(KEYS[3], 1, -2) .. 'd', ARGV[15], ARGV[1]) end
else  -- started at once by the replica that took the submission: leased, never queued
  token = 1
  redis.call('HSET', KEYS[1], 'tok', 1, 'by', ARGV[10])
  redis.call('ZADD', KEYS[5], ARGV[11], ARGV[1])
  fair_hold(KEYS[3], KEYS[1], ARGV[1])
end
for i = 6, 11 do redis.call('ZADD', KEYS[i], micros, ARGV[1]) end
-- the indexes of its labels, the keys from `first` on; their digests kept for its removal
local function index_labels(first)
  local digests = {}
  for i = first, #KEYS do
    redis.call('ZADD', KEYS[i], micros, ARGV[1])
    digests[#digests + 1] = string.match(KEYS[i], 'l:(%x+)$')
  end
  if #digests > 0 then redis.call('HSET', KEYS[1], 'lb', table.concat(digests, ' ')) end
end
"""
# KEYS: header, events, queue, values, leases, the six indexes (see Layout.indexes_of), then the
#       indexes of its labels
# ARGV: task_id, fixed, live, status, priority, owner, workflow, fingerprint, event,
#       holder ('' to queue the task), lease expiry ms, group, its cap, task key prefix,
#       queue deadline ms ('' for none), then digest, value pairs
# -> {1, token} created (token 0 when queued); {0, fingerprint} it exists already
CREATE_TASK = (
    FAIR
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('HGET', KEYS[1], 'fp') or ''} end
local qb = #ARGV[2]
for i = 17, #ARGV, 2 do qb = qb + #ARGV[i] end
"""
    + _STORE_TASK
    + """
for i = 16, #ARGV, 2 do redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1]) end
index_labels(12)
return {1, token}
"""
)

# A rerun (see TaskQueue.create_leased): created as CREATE_TASK creates a task, with the step
# records it keeps and links to the large values they refer to, each to the task that holds the
# bytes (the source, or the task the source links to), which keeps them until it is purged.
# KEYS: as CREATE_TASK's up to the indexes, then steps, order, value links, the source's header, the
#       source's reruns, then the indexes of its labels
# ARGV: as CREATE_TASK's up to the queue deadline, then the source's id, #values,
#       (digest, value) pairs, #records, (index, path, record) triples, then the digests to link
# -> as CREATE_TASK's; {-1, what} when the source or one of its values is gone
CREATE_RERUN = (
    FAIR
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('HGET', KEYS[1], 'fp') or ''} end
if redis.call('EXISTS', KEYS[15]) == 0 then return {-1, 'the task'} end
local prefix, source = ARGV[14], ARGV[16]
local values_at = 18
local records_at = values_at + 2 * tonumber(ARGV[17]) + 1
local digests_at = records_at + 3 * tonumber(ARGV[records_at - 1])
local origins = {}
for j = digests_at, #ARGV do
  local origin = source
  if redis.call('HEXISTS', prefix .. source .. ':v', ARGV[j]) == 0 then
    origin = redis.call('HGET', prefix .. source .. ':vl', ARGV[j])
    if not origin then return {-1, 'its value ' .. ARGV[j]} end
  end
  origins[j] = origin
end
local qb = #ARGV[2]
for i = values_at + 1, records_at - 1, 2 do qb = qb + #ARGV[i] end
"""
    + _STORE_TASK
    + """
redis.call('HSET', KEYS[1], 'ro', source)
for i = values_at, records_at - 2, 2 do redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1]) end
for i = records_at, digests_at - 1, 3 do
  redis.call('HSET', KEYS[12], ARGV[i + 1], ARGV[i + 2])
  redis.call('HSET', KEYS[13], ARGV[i], ARGV[i + 1])
end
for j = digests_at, #ARGV do
  redis.call('HSET', KEYS[14], ARGV[j], origins[j])
  redis.call('SADD', prefix .. origins[j] .. ':b', ARGV[1])
  redis.call('PERSIST', prefix .. origins[j] .. ':v')
end
redis.call('ZADD', KEYS[16], micros, ARGV[1])
local ttl = redis.call('PTTL', KEYS[15])
if ttl > 0 then redis.call('PEXPIRE', KEYS[16], ttl) end
index_labels(17)
return {1, token}
"""
)


# KEYS: queue, leases, due times
# ARGV: lease expiry ms, holder, task key prefix, the statuses that may run (pending, running,
#       waiting), then (entry of the queue, how many tasks to take from it) pairs
# -> {fixed, live, token, ...} for each task claimed
CLAIM_TASKS = (
    FAIR
    + """
local claimed = {}
for i = 7, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    for _, task_id in ipairs(fair_take(KEYS[1], ARGV[i], tonumber(ARGV[i + 1]), ARGV[3], KEYS[2])) do
      local head = ARGV[3] .. task_id
      local status = redis.call('HGET', head, 'st')
      if status == ARGV[4] or status == ARGV[5] or status == ARGV[6] then
        redis.call('ZREM', KEYS[3], task_id)  -- a waiting task resumes: its timer is done with
        local token = redis.call('HINCRBY', head, 'tok', 1)
        redis.call('HSET', head, 'by', ARGV[2])
        redis.call('ZADD', KEYS[2], ARGV[1], task_id)
        fair_hold(KEYS[1], head, task_id)
        local parts = redis.call('HMGET', head, 'f', 'v')
        table.insert(claimed, parts[1])
        table.insert(claimed, parts[2])
        table.insert(claimed, token)
      end
    end
  end
end
return claimed
"""
)


# KEYS: leases; ARGV: expiry ms, task key prefix, then (task_id, token) pairs -> the task ids lost
# A renewal must go through while Redis is at maxmemory, or a replica waiting out a full store
# loses its tasks to another that then calls their in-flight steps again. ZADD is refused
# then; ZREM is not, and once a script has written Redis lets the rest of it write (it cannot
# stop a script halfway), so each lease is taken out and put back: the same memory, in one script.
RENEW_LEASES = """
local lost = {}
for i = 3, #ARGV, 2 do
  local task_id, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. task_id, 'tok') == token and redis.call('ZREM', KEYS[1], task_id) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[1], task_id)
  else
    table.insert(lost, task_id)
  end
end
return lost
"""


# KEYS: leases, queue; ARGV: now ms, task key prefix, pending, running, waiting -> how many went back to
# the queue
# The token changes as the lease is released: a write its holder (cut off from the store while
# it ran out) sends after that is refused, though no replica has claimed the task yet.
RELEASE_EXPIRED = (
    FAIR
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
local n = 0
for _, task_id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], task_id)
  local head = ARGV[2] .. task_id
  local status = redis.call('HGET', head, 'st')
  if status then
    fair_release(KEYS[2], head)
    redis.call('HINCRBY', head, 'tok', 1)  -- fences its holder out now, not at the next claim
  end
  if status == ARGV[3] or status == ARGV[4] or status == ARGV[5] then
    fair_push(KEYS[2], head)
    n = n + 1
  end
end
return n
"""
)


# KEYS: header, queue, events, ends (finished tasks by end time)
# ARGV: live, status, sequence, event, retention ms, backstop ms, index prefix, task_id,
#       the sequence the caller read (compare-and-set), pending
CANCEL_PENDING = (
    MOVE_STATUS
    + FAIR
    + """
local head = KEYS[1]
local fields = redis.call('HMGET', head, 'st', 'ow', 'wf', 'ct', 'seq')
if fields[1] ~= ARGV[10] or fields[5] ~= ARGV[9] or not fair_remove(KEYS[2], head) then return 0 end
redis.call('HSET', head, 'v', ARGV[1], 'st', ARGV[2], 'seq', ARGV[3])
move_status(ARGV[7], ARGV[8], fields[1], ARGV[2], fields[2], fields[3], fields[4])
redis.call('XADD', KEYS[3], '0-' .. ARGV[3], 'e', ARGV[4])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), ARGV[8])
expire_task(head, tonumber(ARGV[5]) + tonumber(ARGV[6]))
return 1
"""
)


# KEYS: header, leases, queue, due times; ARGV: task_id, holder, lease expiry ms, waiting
# -> {fixed, live, token} when the task waited (unleased), else nothing
CLAIM_WAITING = (
    FAIR
    + """
local f = redis.call('HMGET', KEYS[1], 'st')
if f[1] ~= ARGV[4] or redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {} end
fair_remove(KEYS[3], KEYS[1])
fair_hold(KEYS[3], KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local token = redis.call('HINCRBY', KEYS[1], 'tok', 1)
redis.call('HSET', KEYS[1], 'by', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local parts = redis.call('HMGET', KEYS[1], 'f', 'v')
return {parts[1], parts[2], token}
"""
)


# KEYS: queue -> {priority, count, ...}: tasks queued in groups, and tasks queued before groups
QUEUE_DEPTH = """
local counts = {}
local flat = redis.call('HGETALL', KEYS[1] .. ':n')
for i = 1, #flat, 2 do counts[flat[i]] = tonumber(flat[i + 1]) end
local legacy = redis.call('ZCARD', KEYS[1]) - redis.call('HLEN', KEYS[1] .. ':a')
if legacy > 0 then
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    if string.sub(entries[i], 35, 36) ~= 'g:' then
      local pr = tostring(-tonumber(entries[i + 1]))
      counts[pr] = (counts[pr] or 0) + 1
    end
  end
end
local reply = {}
for pr, n in pairs(counts) do
  if n > 0 then
    table.insert(reply, pr)
    table.insert(reply, n)
  end
end
return reply
"""


# KEYS: queue, leases; ARGV: group, task key prefix, the terminal statuses
# -> {task_id, status, leased (0/1), ...} of the group's unfinished tasks (the finished are forgotten)
GROUP_MEMBERS = """
local key = KEYS[1] .. ':m:' .. ARGV[1]
local reply = {}
for _, task_id in ipairs(redis.call('SMEMBERS', key)) do
  local st = redis.call('HGET', ARGV[2] .. task_id, 'st')
  if not st or st == ARGV[3] or st == ARGV[4] or st == ARGV[5] then
    redis.call('SREM', key, task_id)
  else
    table.insert(reply, task_id)
    table.insert(reply, st)
    table.insert(reply, redis.call('ZSCORE', KEYS[2], task_id) and 1 or 0)
  end
end
return reply
"""


# KEYS: the groups' last grants (P{fair}:last); ARGV: how long a grant is remembered (ms), then
# (group, ms) pairs. Past 10,000 groups, those granted longer ago than that are forgotten.
NOTE_TURNS = """
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if redis.call('HLEN', KEYS[1]) > 10000 then
  local oldest = tonumber(ARGV[3]) - tonumber(ARGV[1])
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < oldest then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return 1
"""


# KEYS: the task's header, the partition's cancels; ARGV: task id, reason, now (ms), the terminal
# statuses -> 1 when the request is left, 0 when the task has ended or is gone (a request left
# then would stay in the cancels zset for good: a task's end removes its entry, and none would come)
REQUEST_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'st')
if not st or st == ARGV[4] or st == ARGV[5] or st == ARGV[6] then return 0 end
redis.call('HSET', KEYS[1], 'cx', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""
