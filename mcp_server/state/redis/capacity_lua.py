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
    CAPACITY
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
    CAPACITY
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
