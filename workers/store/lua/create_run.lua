-- create_run.lua — persist a new run, or return the active run of the same plan.
--
-- KEYS[1] run hash          <ns>:run:<id>
-- KEYS[2] run plan          <ns>:run:<id>:plan
-- KEYS[3] runs zset         <ns>:runs
-- KEYS[4] active plans      <ns>:active:plans
-- KEYS[5] active features   <ns>:active:features
-- KEYS[6] events stream     <ns>:run:<id>:events
-- KEYS[7] ready zset        <ns>:run:<id>:ready
-- KEYS[8] flags hash        <ns>:flags
-- KEYS[9] flags version     <ns>:flags:version
-- KEYS[10] request id       <ns>:request:<request id>   "<run id> <plan name>"
--                           (optional: absent = no request id)
-- ARGV[1] run id   ARGV[2] plan name   ARGV[3] now   ARGV[4] plan (JSON)
-- ARGV[5] features (JSON [[name, rank, [dependency, ...]], ...] in dispatch order)
-- ARGV[6] max_parallel   ARGV[7] feature key prefix   ARGV[8] events max length
-- ARGV[9] flags channel <ns>:flags
-- ARGV[10] request id TTL (s), with KEYS[10]
-- KEYS[11] change log <ns>:flags:log (optional: derived from KEYS[8] when not given;
--          capped at ~1000 entries, see transition.lua)
--
-- Returns {"CREATED", run id, already enabled feature...} | {"EXISTS", active run id}
--       | {"REQUEST", "<run id> <plan name>" an earlier start with this request id got}
--       | {"OVERLAP", other run id, feature}.
-- A feature whose published flag is already ENABLED starts ENABLED (nothing to recover).
-- A feature with no published flag is published DISABLED now, atomically with the run,
-- so a service whose coded default is "on" never turns it on while it waits: each gets
-- its own flags version and change-log entry, and all of them go out as one message.
-- With a request id: a known one returns its run and changes nothing (even when that run
-- has finished); otherwise the run this start returns (created or already active) is
-- recorded under it.
local request = KEYS[10]
if request then
  local known = redis.call('GET', request)
  if known then return {'REQUEST', known} end
end
local existing = redis.call('HGET', KEYS[4], ARGV[2])
if existing then
  if request then redis.call('SET', request, existing .. ' ' .. ARGV[2], 'EX', ARGV[10]) end
  return {'EXISTS', existing}
end
local feats = cjson.decode(ARGV[5])
for _, f in ipairs(feats) do
  local other = redis.call('HGET', KEYS[5], f[1])
  if other then return {'OVERLAP', other, f[1]} end
end
local enabled = {}
local out = {'CREATED', ARGV[1]}
local n_enabled = 0
local new, first_change, last_fv, at = {}, nil, nil, tonumber(ARGV[3])
for _, f in ipairs(feats) do
  local raw = redis.call('HGET', KEYS[8], f[1])
  if not raw then
    -- each new feature: its own version and log entry, exactly as transition.lua writes
    -- them; the message is sent once, for all of them, after the loop
    local fv = redis.call('INCR', KEYS[9])
    redis.call('HSET', KEYS[8], f[1], cjson.encode({state = 'DISABLED', percent = 0,
      version = fv, updated_at = at}))
    local change = cjson.encode({feature = f[1], state = 'DISABLED', percent = 0,
      version = fv, updated_at = at})
    table.insert(new, f[1])
    last_fv = fv
    if #new == 1 then first_change = change end
    local clog = KEYS[11] or (KEYS[8] .. ':log')
    local logged = redis.pcall('XADD', clog, 'MAXLEN', '~', '1000', fv .. '-0',
      'change', change)
    if type(logged) == 'table' and logged.err then
      redis.call('DEL', clog)  -- an entry id above fv: the counter went backwards
      redis.call('XADD', clog, 'MAXLEN', '~', '1000', fv .. '-0', 'change', change)
    end
  end
  if raw then
    local ok, flag = pcall(cjson.decode, raw)
    if ok and type(flag) == 'table' and flag['state'] == 'ENABLED' then
      enabled[f[1]] = true
      n_enabled = n_enabled + 1
      table.insert(out, f[1])
    end
  end
end
-- one message for the new features (docs/flags.md): a single change for one, else the
-- batch form (versions last - n + 1 .. last, in the order of "features"); 10,000 new
-- features are one message per subscriber, not 10,000
if #new == 1 then
  redis.call('PUBLISH', ARGV[9], first_change)
elseif #new > 1 then
  redis.call('PUBLISH', ARGV[9], cjson.encode({features = new, state = 'DISABLED',
    percent = 0, version = last_fv, updated_at = at}))
end
local now = ARGV[3]
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'plan', ARGV[2], 'status', 'RUNNING',
  'started_at', now, 'finished_at', '', 'max_parallel', ARGV[6], 'total', #feats,
  'enabled', n_enabled, 'quarantined', 0, 'blocked', 0, 'reason', '')
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
for _, f in ipairs(feats) do
  local pending = 0
  for _, d in ipairs(f[3]) do
    if not enabled[d] then pending = pending + 1 end
  end
  local state = enabled[f[1]] and 'ENABLED' or 'DISABLED'
  redis.call('HSET', ARGV[7] .. f[1], 'state', state, 'percent', enabled[f[1]] and 100 or 0,
    'step', -1, 'health', 'UNKNOWN', 'attempts', 0, 'quarantined', 0, 'blocked', 0,
    'reason', enabled[f[1]] and 'already_enabled' or '', 'pending', pending, 'token', 0,
    'version', 0, 'updated_at', now, 'state_since', now, 'rank', f[2])
  redis.call('HSET', KEYS[5], f[1], ARGV[1])
  if pending == 0 and not enabled[f[1]] then redis.call('ZADD', KEYS[7], f[2], f[1]) end
end
if request then redis.call('SET', request, ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[10]) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'kind', 'run_started',
  'feature', '', 'from', '', 'to', 'RUNNING', 'percent', '', 'reason', 'started',
  'worker', '', 'task_id', '', 'evidence', cjson.encode({plan = ARGV[2], features = #feats,
  already_enabled = n_enabled}), 'ts', now)
return out
