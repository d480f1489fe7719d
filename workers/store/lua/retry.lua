-- retry.lua — an operator's retry: a quarantined feature gets another go in the same run.
--
-- KEYS[1] feature hash    <ns>:run:<id>:feature:<name>
-- KEYS[2] run hash        <ns>:run:<id>
-- KEYS[3] events stream   <ns>:run:<id>:events
-- KEYS[4] ready zset      <ns>:run:<id>:ready
-- KEYS[5] active plans    <ns>:active:plans
-- KEYS[6] active features <ns>:active:features
-- ARGV[1] fencing token   ARGV[2] feature name   ARGV[3] dispatch rank   ARGV[4] now
-- ARGV[5] feature key prefix <ns>:run:<id>:feature:
-- ARGV[6] dependents to unblock (JSON list)
-- ARGV[7] every feature of the run (JSON list; re-claimed when a finished run reopens)
-- ARGV[8] run key prefix <ns>:run:<id>   ARGV[9] run id
-- ARGV[10] actor   ARGV[11] evidence (JSON)   ARGV[12] events max length
--
-- Clears the quarantine (attempts, backoff and hold reset), unblocks the listed
-- dependents that are blocked, requeues the feature when its dependencies are ENABLED,
-- and reopens a finished run (RUNNING again; its plan and features owned by it again;
-- TTLs removed). All checks come before any write: on a refusal nothing changes.
-- Returns {unblocked count, reopened 0/1}.
-- Errors: NOFEATURE, STALE <token>, NOTQUARANTINED, RUNACTIVE <other run> (the plan or a
-- feature now belongs to another active run), INACTIVE <status> (an aborted run).
local cur = redis.call('HMGET', KEYS[1], 'state', 'token', 'quarantined', 'pending', 'blocked')
if not cur[1] then return redis.error_reply('NOFEATURE ' .. ARGV[2]) end
if cur[2] ~= ARGV[1] then return redis.error_reply('STALE ' .. tostring(cur[2])) end
if cur[3] ~= '1' then return redis.error_reply('NOTQUARANTINED ' .. ARGV[2]) end
local run = redis.call('HMGET', KEYS[2], 'status', 'plan', 'stopping')
if run[1] == 'ABORTED' or run[3] == '1' then
  return redis.error_reply('INACTIVE ' .. tostring(run[1]))
end
local reopen = run[1] ~= 'RUNNING' and run[1] ~= 'PENDING'
local names = cjson.decode(ARGV[7])
if reopen then
  local other = redis.call('HGET', KEYS[5], run[2])
  if other and other ~= ARGV[9] then return redis.error_reply('RUNACTIVE ' .. other) end
  for _, f in ipairs(names) do
    local owner = redis.call('HGET', KEYS[6], f)
    if owner and owner ~= ARGV[9] then return redis.error_reply('RUNACTIVE ' .. owner) end
  end
end

redis.call('HSET', KEYS[1], 'quarantined', 0, 'attempts', 0, 'next_attempt_at', 0,
  'hold', '', 'awaiting', '', 'reason', 'retry', 'dispatched_at', '',
  'dispatches', 0, 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'quarantined', -1)
if cur[5] == '1' then
  redis.call('HSET', KEYS[1], 'blocked', 0)
  redis.call('HINCRBY', KEYS[2], 'blocked', -1)
end
local unblocked = 0
for _, d in ipairs(cjson.decode(ARGV[6])) do
  local dkey = ARGV[5] .. d
  if redis.call('HGET', dkey, 'blocked') == '1' then
    redis.call('HSET', dkey, 'blocked', 0, 'reason', '')
    unblocked = unblocked + 1
  end
end
if unblocked > 0 then redis.call('HINCRBY', KEYS[2], 'blocked', -unblocked) end
if cur[1] == 'DISABLED' and tonumber(cur[4] or '0') == 0 then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
end
if reopen then
  redis.call('HSET', KEYS[2], 'status', 'RUNNING', 'finished_at', '',
    'reason', 'reopened: retry of ' .. ARGV[2])
  redis.call('HSET', KEYS[5], run[2], ARGV[9])
  for _, suffix in ipairs({'', ':plan', ':events', ':due', ':ready', ':testing'}) do
    redis.call('PERSIST', ARGV[8] .. suffix)
  end
  for _, f in ipairs(names) do
    redis.call('HSET', KEYS[6], f, ARGV[9])
    redis.call('PERSIST', ARGV[5] .. f)
  end
end
-- the audit cap: the store's default, or the run's own cap (events_max) if larger;
-- a non-transition event raises the run's cap by one (nothing of the run is trimmed)
local cap = math.max(tonumber(ARGV[12]), tonumber(redis.call('HGET', KEYS[2], 'events_max') or '0') or 0) + 1
redis.call('HSET', KEYS[2], 'events_max', cap)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', 'kind', 'retry',
  'feature', ARGV[2], 'from', cur[1], 'to', cur[1], 'percent', '', 'reason', 'retry',
  'worker', '', 'task_id', '', 'evidence', ARGV[11], 'ts', ARGV[4], 'actor', ARGV[10])
return {unblocked, reopen and 1 or 0}
