-- transition.lua — atomically move one feature of one run through one or more steps (a
-- walk), each step applied whole or not at all; the walk stops at the first step not applied.
--
-- KEYS[1] feature hash   <ns>:run:<id>:feature:<name>
-- KEYS[2] flags hash     <ns>:flags                  (published contract)
-- KEYS[3] flags version  <ns>:flags:version          (published contract)
-- KEYS[4] events stream  <ns>:run:<id>:events
-- KEYS[5] testing set    <ns>:run:<id>:testing
-- KEYS[6] ready zset     <ns>:run:<id>:ready
-- KEYS[7] due zset       <ns>:run:<id>:due
-- KEYS[8] run hash       <ns>:run:<id>
-- KEYS[9] freeze key     <ns>:freeze
-- KEYS[10] change log    <ns>:flags:log
-- KEYS[11] decision counters <ns>:stats:decisions
-- ARGV[1] feature name        ARGV[2] fencing token     ARGV[3] worker    ARGV[4] task id
-- ARGV[5] now (unix s)
-- ARGV[6] legal transitions "FROM>TO,FROM>TO,..."   (workers.core.states.TRANSITIONS)
-- ARGV[7] feature key prefix <ns>:run:<id>:feature:   (dependents live under it)
-- ARGV[8] events stream max length (approximate trim; the run's events_max if larger)
-- ARGV[9] flags channel <ns>:flags
-- ARGV[10] change log length, approximate ("" = 1000)
-- ARGV[11] number of steps n >= 1, then 11 arguments per step, from ARGV[12 + 11 (i - 1)]:
--   +0 target state   +1 percent   +2 ramp step   +3 reason code   +4 evidence (JSON)
--   +5 "1" automatic (refused while frozen or once the run is over) / "0" operator
--   +6 expected feature version ("" = any)
--   +7 next due time for the due zset ("" = remove the feature from it)
--   +8 extra feature fields (JSON object, written with the state; on a step to ENABLED a
--      "bake_ends_at" above the run's bake_until raises it, in the same step)
--   +9 direct dependents with their dispatch rank (JSON [[name, rank], ...])
--   +10 a decision outcome counted in KEYS[11] when the step applies ("" = none)
--
-- Returns one reply per step tried, in order, ending at the first one not applied:
--   {"OK", feature version, flags version, settled, total, newly ready dependent...}
--      (settled = the run's enabled + quarantined + blocked features, to spot the end)
--   {"NOSLOT"} (max_parallel features already TESTING) / {"NOTREADY", pending}
--   {"DEPENDENTS", name...}: leaving ENABLED while a direct dependent is still
--      TESTING/ENABLED (roll those back first; the caller retries its cascade)
--   {"ERR", code}: a refusal — NOFEATURE, STALE <current token>, CHANGED <state> <version>,
--      ILLEGAL <from>><to>, FROZEN, INACTIVE <run status>, QUARANTINED.
-- Every applied step is audited; the published flag changes once, after the last applied
-- step (a zero-dwell walk publishes where it ends, not each percent it passes through):
-- the flag, its version counter, the change message (the new value plus the feature name:
-- clients at version fv - 1 apply it without a read) and the change log.
local fkey, name, token_arg, now = KEYS[1], ARGV[1], ARGV[2], ARGV[5]
local n = tonumber(ARGV[11])
local legal = ',' .. ARGV[6] .. ','  -- a plain find of ",FROM>TO," (not a pattern)
-- read once per call: no step writes the freeze, the run's status or its audit cap
local gate, cap = nil, nil
local function automatic_refusal()
  if gate == nil then
    gate = false
    if redis.call('EXISTS', KEYS[9]) == 1 then
      gate = 'FROZEN'
    else
      local run = redis.call('HMGET', KEYS[8], 'status', 'stopping')
      if run[1] ~= 'RUNNING' then gate = 'INACTIVE ' .. tostring(run[1])
      elseif run[2] == '1' then gate = 'INACTIVE stopping' end
    end
  end
  return gate
end

local function step(b)
  local to = ARGV[b]
  local cur = redis.call('HMGET', fkey, 'state', 'token', 'version', 'pending', 'quarantined')
  local state, token, version = cur[1], cur[2], tonumber(cur[3] or '0')
  if not state then return {'ERR', 'NOFEATURE ' .. name} end
  if token ~= token_arg then return {'ERR', 'STALE ' .. tostring(token)} end
  if ARGV[b + 6] ~= '' and tonumber(ARGV[b + 6]) ~= version then
    return {'ERR', 'CHANGED ' .. state .. ' ' .. version}
  end
  if not string.find(legal, ',' .. state .. '>' .. to .. ',', 1, true) then
    return {'ERR', 'ILLEGAL ' .. state .. '>' .. to}
  end
  if ARGV[b + 5] == '1' then
    local refused = automatic_refusal()
    if refused then return {'ERR', refused} end
  end
  if state == 'DISABLED' and to == 'TESTING' then
    if cur[5] == '1' then return {'ERR', 'QUARANTINED'} end
    local pending = tonumber(cur[4] or '0')
    if pending > 0 then return {'NOTREADY', pending} end
    local limit = tonumber(redis.call('HGET', KEYS[8], 'max_parallel') or '1')
    if redis.call('SCARD', KEYS[5]) >= limit then return {'NOSLOT'} end
  end

  if state == 'ENABLED' and to == 'DISABLED' then
    local busy = {'DEPENDENTS'}
    for _, d in ipairs(cjson.decode(ARGV[b + 9])) do
      local ds = redis.call('HGET', ARGV[7] .. d[1], 'state')
      if ds == 'TESTING' or ds == 'ENABLED' then table.insert(busy, d[1]) end
    end
    if #busy > 1 then return busy end
  end

  version = version + 1
  -- one HSET per step (each write command is also fed to the AOF and the replicas)
  local fields = {'state', to, 'percent', ARGV[b + 1], 'step', ARGV[b + 2],
    'reason', ARGV[b + 3], 'version', version, 'updated_at', now}
  if state ~= to then
    fields[#fields + 1] = 'state_since'
    fields[#fields + 1] = now
  end
  local bake = nil
  if ARGV[b + 8] ~= '{}' then
    for k, v in pairs(cjson.decode(ARGV[b + 8])) do
      fields[#fields + 1] = k
      fields[#fields + 1] = tostring(v)
      if k == 'bake_ends_at' then bake = tonumber(v) end
    end
  end
  redis.call('HSET', fkey, unpack(fields))
  -- a promotion's bake holds the run open: raised with the promotion, never lowered, so
  -- no completion check between the two can finish the run before the bake ends
  if to == 'ENABLED' and bake and bake > 0 then
    local cur = tonumber(redis.call('HGET', KEYS[8], 'bake_until') or '0') or 0
    if bake > cur then redis.call('HSET', KEYS[8], 'bake_until', string.format('%.17g', bake)) end
  end

  if to == 'TESTING' then
    redis.call('SADD', KEYS[5], name)
    redis.call('ZREM', KEYS[6], name)
  else
    redis.call('SREM', KEYS[5], name)
  end
  if ARGV[b + 7] == '' then
    redis.call('ZREM', KEYS[7], name)
  else
    redis.call('ZADD', KEYS[7], ARGV[b + 7], name)
  end

  -- dependency bookkeeping, in the same atomic step as the state change
  local ready = {}
  if to == 'ENABLED' or (state == 'ENABLED' and to == 'DISABLED') then
    local delta = (to == 'ENABLED') and -1 or 1
    redis.call('HINCRBY', KEYS[8], 'enabled', -delta)
    for _, d in ipairs(cjson.decode(ARGV[b + 9])) do
      local dkey = ARGV[7] .. d[1]
      local p = redis.call('HINCRBY', dkey, 'pending', delta)
      if delta < 0 and p == 0 then
        local ds = redis.call('HMGET', dkey, 'state', 'quarantined')
        if ds[1] == 'DISABLED' and ds[2] ~= '1' then
          redis.call('ZADD', KEYS[6], d[2], d[1])
          table.insert(ready, d[1])
        end
      elseif delta > 0 then
        redis.call('ZREM', KEYS[6], d[1])
      end
    end
  end

  -- the audit cap: the store's default, or the run's own budget (events_max) if larger
  if cap == nil then
    cap = math.max(tonumber(ARGV[8]),
      tonumber(redis.call('HGET', KEYS[8], 'events_max') or '0') or 0)
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', cap, '*', 'kind', 'transition',
    'feature', name, 'from', state, 'to', to, 'percent', ARGV[b + 1], 'step', ARGV[b + 2],
    'reason', ARGV[b + 3], 'worker', ARGV[3], 'task_id', ARGV[4], 'evidence', ARGV[b + 4],
    'ts', now, 'version', version, 'token', token_arg)
  if ARGV[b + 10] ~= '' then redis.call('HINCRBY', KEYS[11], ARGV[b + 10], 1) end
  return {'OK', version, 0, 0, 0, unpack(ready)}
end

local out, last = {}, nil
for i = 1, n do
  local b = 12 + 11 * (i - 1)
  local res = step(b)
  table.insert(out, res)
  if res[1] ~= 'OK' then break end
  last = b
end
if last == nil then return out end

local to, pct, at = ARGV[last], tonumber(ARGV[last + 1]), tonumber(now)
local fv = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], name,
  cjson.encode({state = to, percent = pct, version = fv, updated_at = at}))
local change = cjson.encode({feature = name, state = to, percent = pct, version = fv,
  updated_at = at})
redis.call('PUBLISH', ARGV[9], change)
local loglen = ARGV[10] ~= '' and ARGV[10] or '1000'
local logged = redis.pcall('XADD', KEYS[10], 'MAXLEN', '~', loglen, fv .. '-0',
  'change', change)
if type(logged) == 'table' and logged.err then
  -- an entry id above fv: the counter went backwards (data loss); restart the log
  redis.call('DEL', KEYS[10])
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', loglen, fv .. '-0', 'change', change)
end

local run = redis.call('HMGET', KEYS[8], 'enabled', 'quarantined', 'blocked', 'total')
local settled = tonumber(run[1] or '0') + tonumber(run[2] or '0') + tonumber(run[3] or '0')
for _, res in ipairs(out) do
  if res[1] == 'OK' then
    res[3], res[4], res[5] = fv, settled, tonumber(run[4] or '0')
  end
end
return out
