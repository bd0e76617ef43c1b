"""The Lua scripts of the capacity ledger on Redis (capacity.py), in one slot tagged {cap}; see
protocols/capacity.py for the rule they apply."""

from __future__ import annotations

# ---- capacity (one slot, tag {cap}; see protocols/capacity.py for the rule) --------------------
CAPACITY = """
local function parse(text)
  local t = {}
  for x in string.gmatch(text, '[^,]+') do t[#t + 1] = tonumber(x) end
  return t
end
local function grant_of(id)
  local grant = redis.call('HGET', KEYS[2], id)
  if not grant then return nil end
  local address, needs, units = string.match(grant, '^(.*)|([^|]*)|([^|]*)$')
  if address then return address, needs, tonumber(units) end
  address, needs = string.match(grant, '^(.*)|(.*)$')
  return address, needs, 1
end
-- gives back `n` units of grant `id` (nil, 0 or all it has: the whole grant)
local function give_back(id, n)
  local address, needs, units = grant_of(id)
  if address then
    if n == nil or n <= 0 or n > units then n = units end
    local use = parse(redis.call('HGET', KEYS[6], address) or '0,0,0')
    local k = parse(needs)
    local left = (use[1] - k[1] * n) .. ',' .. (use[2] - k[2] * n) .. ',' .. (use[3] - k[3] * n)
    redis.call('HSET', KEYS[6], address, left)
    if n < units then
      redis.call('HSET', KEYS[2], id, address .. '|' .. needs .. '|' .. (units - n))
      return
    end
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
"""


# KEYS: grants (zset id -> expiry), grant data (id -> address|needs|units), waiters (zset rank), waiter
#       data (member -> expiry|needs|units|candidates), capacities (address -> c,m,g), in use (address -> c,m,g)
# ARGV: member (`<enqueued ms>:<id>`), id, -priority, needs, now ms, waiter expiry ms, grant expiry
#       ms, units wanted, then (address, capacity) pairs of the candidates
# -> {address granted to this caller or '', units granted, calls waiting now}
# A waiter wanting n units gets as many as fit (1 to n) on the instance the rule picks for it.
# The scan stops once every instance with a capacity is blocked: no waiter behind can be granted.
ACQUIRE_CAPACITY = (
    CAPACITY
    + """
local now = tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do give_back(id) end
local function mine()
  local address, _, units = grant_of(ARGV[2])
  if address then return {address, units, redis.call('ZCARD', KEYS[3])} end
  return nil
end
local granted = mine()
if granted then return granted end
local candidates = {}
for i = 9, #ARGV, 2 do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  candidates[#candidates + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[1])
local asked = ARGV[6] .. '|' .. ARGV[4] .. '|' .. ARGV[8] .. '|' .. table.concat(candidates, ';')
redis.call('HSET', KEYS[4], ARGV[1], asked)
local caps, use, blocked, nblocked = {}, {}, {}, 0
local limited = redis.call('HLEN', KEYS[5])
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
-- waiters in rank order, a page at a time (a page only while some instance may still grant);
-- the waiters taken out of the queue were all read already, so the next unread one ranks at
-- (read - removed)
local page, read, removed, members, index = 64, 0, 0, {}, 1
local function next_member()
  if index > #members then
    if nblocked >= limited then return nil end
    members = redis.call('ZRANGE', KEYS[3], read - removed, read - removed + page - 1)
    read, index = read + #members, 1
    if #members == 0 then return nil end
  end
  index = index + 1
  return members[index - 1]
end
while true do
  local member = next_member()
  if member == nil or nblocked >= limited then break end
  local data = redis.call('HGET', KEYS[4], member)
  local expiry, needs_text, want, cands = nil, nil, 1, nil
  if data then
    expiry, needs_text, want, cands = string.match(data, '^(.-)|(.-)|(%d+)|(.*)$')
    if not expiry then
      expiry, needs_text, cands = string.match(data, '^(.-)|(.-)|(.*)$')
      want = 1
    end
    want = tonumber(want)
  end
  if not data or tonumber(expiry) < now then
    redis.call('ZREM', KEYS[3], member)
    redis.call('HDEL', KEYS[4], member)
    removed = removed + 1
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
      local u, cap = in_use(best), capacity(best)
      local units = want
      for r = 1, 3 do
        if cap[r] > 0 and needs[r] > 0 then
          local room = math.floor((cap[r] - u[r]) / needs[r])
          if room < units then units = room end
        end
      end
      if units < 1 then units = 1 end
      use[best] = {u[1] + needs[1] * units, u[2] + needs[2] * units, u[3] + needs[3] * units}
      redis.call('HSET', KEYS[6], best, use[best][1] .. ',' .. use[best][2] .. ',' .. use[best][3])
      local id = string.match(member, '^[^:]*:(.*)$')
      redis.call('HSET', KEYS[2], id, best .. '|' .. needs_text .. '|' .. units)
      redis.call('ZADD', KEYS[1], ARGV[7], id)
      redis.call('ZREM', KEYS[3], member)
      redis.call('HDEL', KEYS[4], member)
      removed = removed + 1
    else
      for _, a in ipairs(mine_cands) do
        if capacity(a) and not blocked[a] then
          blocked[a] = true
          nblocked = nblocked + 1
        end
      end
    end
  end
end
granted = mine()
if granted then return granted end
return {'', 0, redis.call('ZCARD', KEYS[3])}
"""
)


# KEYS: as ACQUIRE_CAPACITY; ARGV: member, id, units (0: all) -> gives back a grant (or that many
# of its units), or withdraws a waiter; returns how many calls wait now
RELEASE_CAPACITY = (
    CAPACITY
    + """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
give_back(ARGV[2], tonumber(ARGV[3] or '0'))
return redis.call('ZCARD', KEYS[3])
"""
)


# KEYS: grants, grant data; ARGV: expiry ms, ids -> keeps the grants alive; returns the ids not held
# Taken out and put back, so that a renewal goes through while Redis is at maxmemory (see
# RENEW_LEASES in queue_lua.py): a grant that lapsed then would let another replica's call onto
# the capacity a running call still holds.
RENEW_CAPACITY = """
local missing = {}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
return missing
"""
