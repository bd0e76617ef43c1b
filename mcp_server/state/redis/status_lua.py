"""Lua shared by the scripts that change a task's status: moving it between the listing indexes
(see layout.py), and putting a finished task's keys on their retention TTL."""

from __future__ import annotations

# Moving a task between the status indexes, shared by the scripts that change a status.
MOVE_STATUS = """
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
  for _, suffix in ipairs({'', ':s', ':o', ':e', ':g', ':w', ':vl', ':r', ':c'}) do
    redis.call('PEXPIRE', head .. suffix, ms)
  end
  -- values reruns share stay until the purge gives each rerun its copy
  if redis.call('EXISTS', head .. ':b') == 0 then redis.call('PEXPIRE', head .. ':v', ms) end
end
"""
