"""The budget ledger's Lua scripts (``services/common/budget.py`` says what the keys hold).

Each script's comment names its ``KEYS`` and ``ARGV``; every key shares the ``{budget}`` hash tag.
"""

# Gives back holds whose expiry passed (a replica crashed between reserve and settle). Bounded per
# call so one script never blocks Redis for long; the next call carries on.
# KEYS[1] month totals (and each tenant's, as fields ``tenant:<name>:spent|reserved``), KEYS[2] pending,
# KEYS[3] held, KEYS[4] owners (reservation id → tenant, kept for the month: a late settle still finds it).
SWEEP = """
local function tenant_field(tenant, what) return 'tenant:' .. tenant .. ':' .. what end
local function sweep(now)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 512)
  for _, rid in ipairs(stale) do
    local held = redis.call('HGET', KEYS[3], rid)
    if held then
      redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
      local owner = redis.call('HGET', KEYS[4], rid)
      if owner then redis.call('HINCRBY', KEYS[1], tenant_field(owner, 'reserved'), '-' .. held) end
      redis.call('HDEL', KEYS[3], rid)
    end
    redis.call('ZREM', KEYS[2], rid)
  end
  return #stale
end
local function totals()
  local t = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
  return tonumber(t[1] or '0'), tonumber(t[2] or '0')
end
local function tenant_totals(tenant)
  if tenant == '' then return 0, 0 end
  local t = redis.call('HMGET', KEYS[1], tenant_field(tenant, 'spent'), tenant_field(tenant, 'reserved'))
  return tonumber(t[1] or '0'), tonumber(t[2] or '0')
end
local function keep(ttl)
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
"""

# KEYS: month, pending, held, owners, job record.
# ARGV: now ms, new reservation id, cost, cap, expiry ms, record ttl s, month ttl s, month, journal in use (1|0),
# tenant ('' = none), the tenant's cap (-1 = none).
# Returns {outcome, rid, cost, month, expiry ms, state, spent, reserved, released, tenant spent, tenant reserved};
# outcome 'refused' (the deployment's cap), 'refused_tenant' (the tenant's), or 'unseeded' when a journal is
# in use and the month's totals were not rebuilt from it yet (they may have been lost).
RESERVE = SWEEP + """
if ARGV[9] == '1' and redis.call('HEXISTS', KEYS[1], 'journaled') == 0 then
  return {'unseeded', '', 0, ARGV[8], 0, '', 0, 0, 0, 0, 0}
end
local released = sweep(ARGV[1])
local spent, reserved = totals()
local tenant = ARGV[10]
local t_spent, t_reserved = tenant_totals(tenant)
local job = redis.call('HMGET', KEYS[5], 'rid', 'cost', 'month', 'expires', 'state')
-- A replay: a held (unexpired) or settled reservation is the job's; a refunded or expired one
-- is not, and the job may try again against the cap.
if job[1] and (job[5] == 'settled' or (job[5] == 'reserved' and tonumber(job[4]) > tonumber(ARGV[1]))) then
  return {'existing', job[1], tonumber(job[2]), job[3], tonumber(job[4]), job[5], spent, reserved, released,
          t_spent, t_reserved}
end
local cost = tonumber(ARGV[3])
-- Both caps in one script: no replica can pass either between the check and the hold.
if spent + reserved + cost > tonumber(ARGV[4]) then
  return {'refused', '', cost, ARGV[8], 0, '', spent, reserved, released, t_spent, t_reserved}
end
local tenant_cap = tonumber(ARGV[11])
if tenant ~= '' and tenant_cap >= 0 and t_spent + t_reserved + cost > tenant_cap then
  return {'refused_tenant', '', cost, ARGV[8], 0, '', spent, reserved, released, t_spent, t_reserved}
end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[3])
redis.call('HSETNX', KEYS[1], 'spent', '0')
if tenant ~= '' then
  redis.call('HINCRBY', KEYS[1], tenant_field(tenant, 'reserved'), ARGV[3])
  redis.call('HSETNX', KEYS[1], tenant_field(tenant, 'spent'), '0')
  redis.call('HSET', KEYS[4], ARGV[2], tenant)
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[5], 'rid', ARGV[2], 'cost', ARGV[3], 'month', ARGV[8], 'expires', ARGV[5], 'state', 'reserved')
redis.call('EXPIRE', KEYS[5], ARGV[6])
keep(ARGV[7])
return {'granted', ARGV[2], cost, ARGV[8], tonumber(ARGV[5]), 'reserved', spent, reserved + cost, released,
        t_spent, t_reserved + cost}
"""

# KEYS: month, pending, held, owners, closed, job record.  ARGV: rid, 'settled' | 'refunded', actual cost,
# month ttl s. Returns {outcome, spent, reserved}: 'duplicate' (already closed), 'held' or 'expired' (the hold
# had already been swept; a settle still counts, because the money was spent). The reservation's tenant
# (its owner) is charged or given back the same way.
CLOSE = SWEEP + """
local rid = ARGV[1]
if redis.call('SADD', KEYS[5], rid) == 0 then
  local spent, reserved = totals()
  return {'duplicate', spent, reserved}
end
local owner = redis.call('HGET', KEYS[4], rid)
local held = redis.call('HGET', KEYS[3], rid)
if held then
  redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
  if owner then redis.call('HINCRBY', KEYS[1], tenant_field(owner, 'reserved'), '-' .. held) end
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[2], rid)
end
if ARGV[2] == 'settled' then
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3])
  if owner then redis.call('HINCRBY', KEYS[1], tenant_field(owner, 'spent'), ARGV[3]) end
end
-- Only the job's current reservation moves its state; a superseded one leaves the record alone.
if redis.call('HGET', KEYS[6], 'rid') == rid then redis.call('HSET', KEYS[6], 'state', ARGV[2]) end
keep(ARGV[4])
redis.call('EXPIRE', KEYS[5], ARGV[4])
local spent, reserved = totals()
return {held and 'held' or 'expired', spent, reserved}
"""

# KEYS: month, pending, held, owners.  ARGV: now ms, tenant ('' or absent = none).  Sweeps too: if the only
# holds left are a dead replica's, nobody may reserve, and a gate reading unswept totals would refuse forever.
# Returns {spent, reserved, released, journaled (1|0), the tenant's spent, the tenant's reserved}.
SNAPSHOT = SWEEP + """
local released = sweep(ARGV[1])
local spent, reserved = totals()
local t_spent, t_reserved = tenant_totals(ARGV[2] or '')
return {spent, reserved, released, redis.call('HEXISTS', KEYS[1], 'journaled'), t_spent, t_reserved}
"""

# KEYS: month, pending, held, owners, closed.  ARGV: month ttl s, then per journal entry: rid, state, cost,
# expiry ms, tenant ('' = none).
# Rebuilds the totals once (the first rebuild wins). Reservations Redis closed since it lost the
# month (a settle arriving after a restart) are counted already and skipped; settled entries are
# spent, held ones held again until they settle, are refunded, or expire; each for its tenant too.
SEED = SWEEP + """
if redis.call('HEXISTS', KEYS[1], 'journaled') == 1 then return 0 end
for i = 2, #ARGV, 5 do
  local rid, state, cost, tenant = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4]
  if redis.call('SISMEMBER', KEYS[5], rid) == 0 and redis.call('HEXISTS', KEYS[3], rid) == 0 then
    if tenant ~= '' then redis.call('HSET', KEYS[4], rid, tenant) end
    if state == 'settled' then
      redis.call('HINCRBY', KEYS[1], 'spent', cost)
      if tenant ~= '' then redis.call('HINCRBY', KEYS[1], tenant_field(tenant, 'spent'), cost) end
      redis.call('SADD', KEYS[5], rid)
    elseif state == 'refunded' then
      redis.call('SADD', KEYS[5], rid)
    else
      redis.call('HINCRBY', KEYS[1], 'reserved', cost)
      if tenant ~= '' then redis.call('HINCRBY', KEYS[1], tenant_field(tenant, 'reserved'), cost) end
      redis.call('HSET', KEYS[3], rid, cost)
      redis.call('ZADD', KEYS[2], ARGV[i + 3], rid)
    end
  end
end
redis.call('HSETNX', KEYS[1], 'spent', '0')
redis.call('HSETNX', KEYS[1], 'reserved', '0')
redis.call('HSET', KEYS[1], 'journaled', '1')
keep(ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[1])
return 1
"""
