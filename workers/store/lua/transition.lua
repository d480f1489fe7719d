-- transition.lua — atomically move one feature of one run to a new state, or change nothing.
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
-- ARGV[1] feature name        ARGV[2] target state     ARGV[3] percent   ARGV[4] ramp step
-- ARGV[5] fencing token       ARGV[6] reason code      ARGV[7] worker    ARGV[8] task id
-- ARGV[9] evidence (JSON)     ARGV[10] now (unix s)
-- ARGV[11] legal transitions "FROM>TO,FROM>TO,..."   (workers.states.TRANSITIONS)
-- ARGV[12] "1" automatic (refused while frozen or once the run is over) / "0" operator
-- ARGV[13] expected feature version ("" = any)
-- ARGV[14] next due time for the due zset ("" = remove the feature from it)
-- ARGV[15] extra feature fields (JSON object, written with the state)
-- ARGV[16] feature key prefix <ns>:run:<id>:feature:   (dependents live under it)
-- ARGV[17] direct dependents with their dispatch rank (JSON [[name, rank], ...])
-- ARGV[18] events stream max length (approximate trim)
-- ARGV[19] flags channel <ns>:flags
-- KEYS[10] change log <ns>:flags:log (optional: derived from KEYS[2] when not given)
-- ARGV[20] change log length, approximate (optional, default 1000)
--
-- Returns {"OK", feature version, flags version, settled, total, newly ready dependent...}
--      (settled = the run's enabled + quarantined + blocked features, to spot the end)
--      or {"NOSLOT"} (max_parallel features already TESTING) / {"NOTREADY", pending}
--      or {"DEPENDENTS", name...}: leaving ENABLED while a direct dependent is still
--         TESTING/ENABLED (roll those back first; the caller retries its cascade).
-- Errors: NOFEATURE, STALE <current token>, CHANGED <state> <version>, ILLEGAL <from>><to>,
--         FROZEN, INACTIVE <run status>, QUARANTINED.
local fkey = KEYS[1]
local cur = redis.call('HMGET', fkey, 'state', 'token', 'version', 'pending', 'quarantined')
local state, token, version = cur[1], cur[2], tonumber(cur[3] or '0')
if not state then return redis.error_reply('NOFEATURE ' .. ARGV[1]) end
if token ~= ARGV[5] then return redis.error_reply('STALE ' .. tostring(token)) end
if ARGV[13] ~= '' and tonumber(ARGV[13]) ~= version then
  return redis.error_reply('CHANGED ' .. state .. ' ' .. version)
end
local to = ARGV[2]
local legal = false
for pair in string.gmatch(ARGV[11], '[^,]+') do
  if pair == state .. '>' .. to then legal = true break end
end
if not legal then return redis.error_reply('ILLEGAL ' .. state .. '>' .. to) end
if ARGV[12] == '1' then
  if redis.call('EXISTS', KEYS[9]) == 1 then return redis.error_reply('FROZEN') end
  local status = redis.call('HGET', KEYS[8], 'status')
  if status ~= 'RUNNING' then return redis.error_reply('INACTIVE ' .. tostring(status)) end
  if redis.call('HGET', KEYS[8], 'stopping') == '1' then return redis.error_reply('INACTIVE stopping') end
end
if state == 'DISABLED' and to == 'TESTING' then
  if cur[5] == '1' then return redis.error_reply('QUARANTINED') end
  local pending = tonumber(cur[4] or '0')
  if pending > 0 then return {'NOTREADY', pending} end
  local limit = tonumber(redis.call('HGET', KEYS[8], 'max_parallel') or '1')
  if redis.call('SCARD', KEYS[5]) >= limit then return {'NOSLOT'} end
end

if state == 'ENABLED' and to == 'DISABLED' then
  local busy = {'DEPENDENTS'}
  for _, d in ipairs(cjson.decode(ARGV[17])) do
    local ds = redis.call('HGET', ARGV[16] .. d[1], 'state')
    if ds == 'TESTING' or ds == 'ENABLED' then table.insert(busy, d[1]) end
  end
  if #busy > 1 then return busy end
end

local now = ARGV[10]
version = version + 1
redis.call('HSET', fkey, 'state', to, 'percent', ARGV[3], 'step', ARGV[4], 'reason', ARGV[6],
  'version', version, 'updated_at', now)
if state ~= to then redis.call('HSET', fkey, 'state_since', now) end
local extra = cjson.decode(ARGV[15])
for k, v in pairs(extra) do redis.call('HSET', fkey, k, tostring(v)) end

if to == 'TESTING' then
  redis.call('SADD', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
else
  redis.call('SREM', KEYS[5], ARGV[1])
end
if ARGV[14] == '' then
  redis.call('ZREM', KEYS[7], ARGV[1])
else
  redis.call('ZADD', KEYS[7], ARGV[14], ARGV[1])
end

-- dependency bookkeeping, in the same atomic step as the state change
local ready = {}
if to == 'ENABLED' or (state == 'ENABLED' and to == 'DISABLED') then
  local delta = (to == 'ENABLED') and -1 or 1
  redis.call('HINCRBY', KEYS[8], 'enabled', -delta)
  for _, d in ipairs(cjson.decode(ARGV[17])) do
    local dkey = ARGV[16] .. d[1]
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

-- the published flag, its version counter, the change message (the new value plus the
-- feature name: clients at version fv - 1 apply it without a read) and the change log
local fv = redis.call('INCR', KEYS[3])
local pct, at = tonumber(ARGV[3]), tonumber(now)
redis.call('HSET', KEYS[2], ARGV[1],
  cjson.encode({state = to, percent = pct, version = fv, updated_at = at}))
local change = cjson.encode({feature = ARGV[1], state = to, percent = pct, version = fv,
  updated_at = at})
redis.call('PUBLISH', ARGV[19], change)
local clog = KEYS[10] or (KEYS[2] .. ':log')
local logged = redis.pcall('XADD', clog, 'MAXLEN', '~', ARGV[20] or '1000', fv .. '-0',
  'change', change)
if type(logged) == 'table' and logged.err then
  -- an entry id above fv: the counter went backwards (data loss); restart the log
  redis.call('DEL', clog)
  redis.call('XADD', clog, 'MAXLEN', '~', ARGV[20] or '1000', fv .. '-0', 'change', change)
end

-- the audit cap: the store's default, or the run's own budget (events_max) if larger
local cap = math.max(tonumber(ARGV[18]), tonumber(redis.call('HGET', KEYS[8], 'events_max') or '0') or 0)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', cap, '*', 'kind', 'transition',
  'feature', ARGV[1], 'from', state, 'to', to, 'percent', ARGV[3], 'step', ARGV[4],
  'reason', ARGV[6], 'worker', ARGV[7], 'task_id', ARGV[8], 'evidence', ARGV[9],
  'ts', now, 'version', version, 'token', ARGV[5])

local run = redis.call('HMGET', KEYS[8], 'enabled', 'quarantined', 'blocked', 'total')
local settled = tonumber(run[1] or '0') + tonumber(run[2] or '0') + tonumber(run[3] or '0')
local out = {'OK', version, fv, settled, tonumber(run[4] or '0')}
for _, r in ipairs(ready) do table.insert(out, r) end
return out
