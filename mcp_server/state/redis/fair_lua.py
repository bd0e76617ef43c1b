"""The fair queue on Redis, as Lua the queue scripts share (queue_lua, tasks_lua, waits_lua).

A partition's queue `Q` (P{T}:q) is a sorted set, score -priority, ordered within a priority by
member, whose first 16 characters are a time in microseconds. Its members are groups in their
turn, `<micros>:<micros>:g:<group>|<priority>`: each group (an owner's tasks, or a concurrency key
value's) has one entry per priority while it has tasks queued there, and goes to the back of
the rotation each time one of its tasks is claimed; so within a priority the queue is served
round robin across groups, whatever their backlogs; the turn also names when its group's first
task there was created (`<micros>:<first task's create micros>:g:<group>|<priority>`), so that a
group whose tasks are on several partitions gives them oldest first. (Members `<create
micros>:<task id>` are tasks queued before groups existed; they are claimed as they are.) Beside Q:

    Q:f:<group>|<priority>  the group's tasks queued at that priority: zset, score 0, member
                            `<create micros>:<task id>` (the task's `qm`): FIFO by create time
    Q:a                     groups in rotation: hash `<group>|<priority>` -> their member in Q
    Q:b:<group>             a group at its cap: hash priority -> its member in Q, restored when a
                            running task of the group ends, waits or loses its lease
    Q:r:<group>             the group's tasks held by a replica (a capped group's): set of task ids,
                            pruned as they are read (kept while leased; counted while not waiting)
    Q:m:<group>             every unfinished task of a concurrency key's group: set of task ids,
                            pruned as it is read
    Q:n                     how many tasks are queued: hash priority -> count
    Q:o                     how many tasks of each owner are queued here: hash owner -> count
                            (tasks queued before it existed are not counted; a count never goes below 0)
    Q:ob                    the bytes of those tasks (each task's `qb`, what its submission stored;
                            tasks from before `qb` existed count 0); gone with the owner's count

A task's header has `fg` (its group), `cap` (the group's max_running, 0: none) and `qb` (the bytes
its submission stored: its fixed part and the values created with it, as state/common.queued_bytes). A group's
tasks all live in one partition when it has a cap (the task ids are chosen so), which keeps
the running count and the claim in one slot, atomic on a cluster as on one node.
"""

from __future__ import annotations

from mcp_sdk.proto import task_pb2

FAIR = """
local ST_PENDING, ST_RUNNING = '%PENDING%', '%RUNNING%'
local function fair_now()
  local now = redis.call('TIME')
  return string.format('%016d', tonumber(now[1]) * 1000000 + tonumber(now[2]))
end
-- put a group in its turn at the back of the rotation, unless it is there or blocked at its cap;
-- the turn names when its first task was created, so a group's turns on several partitions are
-- taken oldest task first
local function fair_activate(Q, group, pr)
  local slot = group .. '|' .. pr
  if redis.call('HEXISTS', Q .. ':a', slot) == 1 or redis.call('HEXISTS', Q .. ':b:' .. group, pr) == 1 then return end
  local first = redis.call('ZRANGE', Q .. ':f:' .. slot, 0, 0)
  if #first == 0 then return end
  local member = fair_now() .. ':' .. string.sub(first[1], 1, 16) .. ':g:' .. slot
  redis.call('ZADD', Q, -tonumber(pr), member)
  redis.call('HSET', Q .. ':a', slot, member)
end
-- one task of `owner` more (1) or fewer (-1) queued in this partition, and its bytes (`qb`)
local function fair_count_owner(Q, owner, by, bytes)
  if not owner then return end
  if redis.call('HINCRBY', Q .. ':o', owner, by) <= 0 then
    redis.call('HDEL', Q .. ':o', owner)
    redis.call('HDEL', Q .. ':ob', owner)
    return
  end
  bytes = tonumber(bytes or '0') or 0
  if bytes > 0 and redis.call('HINCRBY', Q .. ':ob', owner, by * bytes) <= 0 then
    redis.call('HDEL', Q .. ':ob', owner)
  end
end
-- queue a task (its header at `head`) behind the others of its group
local function fair_push(Q, head)
  local f = redis.call('HMGET', head, 'qm', 'pr', 'fg', 'ow', 'qb')
  if not f[3] or f[3] == '' then
    redis.call('ZADD', Q, -tonumber(f[2]), f[1])
    return
  end
  if redis.call('ZADD', Q .. ':f:' .. f[3] .. '|' .. f[2], 0, f[1]) == 1 then
    redis.call('HINCRBY', Q .. ':n', f[2], 1)
    fair_count_owner(Q, f[4], 1, f[5])
  end
  fair_activate(Q, f[3], f[2])
end
-- take a task out of the queue; true if it was queued (its group's turn, if now empty, lapses at its claim)
local function fair_remove(Q, head)
  local f = redis.call('HMGET', head, 'qm', 'pr', 'fg', 'ow', 'qb')
  if not f[3] or f[3] == '' then return redis.call('ZREM', Q, f[1]) == 1 end
  if redis.call('ZREM', Q .. ':f:' .. f[3] .. '|' .. f[2], f[1]) == 1 then
    redis.call('HINCRBY', Q .. ':n', f[2], -1)
    fair_count_owner(Q, f[4], -1, f[5])
    return true
  end
  return false
end
-- whether a task is queued
local function fair_queued(Q, head)
  local f = redis.call('HMGET', head, 'qm', 'pr', 'fg')
  if not f[1] then return false end
  if not f[3] or f[3] == '' then return redis.call('ZSCORE', Q, f[1]) ~= false end
  return redis.call('ZSCORE', Q .. ':f:' .. f[3] .. '|' .. f[2], f[1]) ~= false
end
-- how many tasks of a group run now (held by a replica, not waiting); forgets those no longer held
local function fair_running(Q, group, prefix, leases)
  local key = Q .. ':r:' .. group
  local n = 0
  for _, task_id in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('ZSCORE', leases, task_id) then
      local st = redis.call('HGET', prefix .. task_id, 'st')
      if st == ST_PENDING or st == ST_RUNNING then n = n + 1 end
    else
      redis.call('SREM', key, task_id)
    end
  end
  return n
end
-- a task of the group is now held by a replica
local function fair_hold(Q, head, task_id)
  local f = redis.call('HMGET', head, 'fg', 'cap')
  if f[2] and tonumber(f[2]) > 0 then redis.call('SADD', Q .. ':r:' .. f[1], task_id) end
end
-- a running task of the group stopped counting (ended, waits, lost its lease): its blocked turns come back
local function fair_release(Q, head)
  local f = redis.call('HMGET', head, 'fg', 'cap')
  if not f[2] or tonumber(f[2]) == 0 then return end
  local blocked = Q .. ':b:' .. f[1]
  local turns = redis.call('HGETALL', blocked)
  redis.call('DEL', blocked)
  for i = 1, #turns, 2 do
    redis.call('ZADD', Q, -tonumber(turns[i]), turns[i + 1])
    redis.call('HSET', Q .. ':a', f[1] .. '|' .. turns[i], turns[i + 1])
  end
end
-- whether a task's group is at its cap (a task leased at once must be queued instead)
local function fair_full(Q, head, prefix, leases)
  local f = redis.call('HMGET', head, 'fg', 'cap')
  if not f[2] or tonumber(f[2]) == 0 then return false end
  return fair_running(Q, f[1], prefix, leases) >= tonumber(f[2])
end
-- up to `n` tasks to claim for the entry `member`, taken off Q: their ids. A group's turn gives
-- its first tasks and goes to the back of the rotation; a group with nothing queued lapses; a
-- group at its cap is blocked, keeping its place. (A task's own entry gives that task.)
local function fair_take(Q, member, n, prefix, leases)
  local group, pr = string.match(member, '^%d+:%d+:g:(.*)|(%-?%d+)$')
  if not group then return {string.sub(member, 18)} end
  local slot = group .. '|' .. pr
  redis.call('HDEL', Q .. ':a', slot)
  local fifo = Q .. ':f:' .. slot
  local taken = {}
  local running = nil
  while #taken < n do
    local first = redis.call('ZRANGE', fifo, 0, 0)
    if #first == 0 then return taken end
    local task_id = string.sub(first[1], 18)
    local cap = tonumber(redis.call('HGET', prefix .. task_id, 'cap') or '0')
    if cap > 0 then
      running = running or fair_running(Q, group, prefix, leases)
      if running + #taken >= cap then
        redis.call('HSET', Q .. ':b:' .. group, pr, member)
        return taken
      end
    end
    redis.call('ZREM', fifo, first[1])
    redis.call('HINCRBY', Q .. ':n', pr, -1)
    local ow = redis.call('HMGET', prefix .. task_id, 'ow', 'qb')
    fair_count_owner(Q, ow[1], -1, ow[2])
    table.insert(taken, task_id)
  end
  if redis.call('ZCARD', fifo) > 0 then fair_activate(Q, group, pr) end
  return taken
end
""".replace("%PENDING%", str(task_pb2.TASK_STATUS_PENDING)).replace("%RUNNING%", str(task_pb2.TASK_STATUS_RUNNING))
