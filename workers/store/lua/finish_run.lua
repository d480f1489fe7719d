-- finish_run.lua — give a run its final status once, release its plan and features.
--
-- KEYS[1] run hash         <ns>:run:<id>
-- KEYS[2] active plans     <ns>:active:plans
-- KEYS[3] active features  <ns>:active:features
-- KEYS[4] events stream    <ns>:run:<id>:events
-- KEYS[5] runs index       <ns>:runs
-- ARGV[1] run id   ARGV[2] final status   ARGV[3] now   ARGV[4] reason
-- ARGV[5] features (JSON list of names)   ARGV[6] events max length
-- ARGV[7] TTL (s) for the run's keys      ARGV[8] run key prefix <ns>:run:<id>
--
-- Returns {"FINISHED", status} or {"ALREADY", status} (nothing changed), or
-- {"STOPPING", status}: an abort is under way, only ABORTED may end the run.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.error_reply('NORUN ' .. ARGV[1]) end
if status ~= 'RUNNING' and status ~= 'PENDING' then return {'ALREADY', status} end
if ARGV[2] ~= 'ABORTED' and redis.call('HGET', KEYS[1], 'stopping') == '1' then
  return {'STOPPING', status}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'reason', ARGV[4])
local plan = redis.call('HGET', KEYS[1], 'plan')
if redis.call('HGET', KEYS[2], plan) == ARGV[1] then redis.call('HDEL', KEYS[2], plan) end
local names = cjson.decode(ARGV[5])
for _, f in ipairs(names) do
  if redis.call('HGET', KEYS[3], f) == ARGV[1] then redis.call('HDEL', KEYS[3], f) end
end
-- the audit cap: the store's default, or the run's own cap (events_max) if larger;
-- a non-transition event raises the run's cap by one (nothing of the run is trimmed)
local cap = math.max(tonumber(ARGV[6]), tonumber(redis.call('HGET', KEYS[1], 'events_max') or '0') or 0) + 1
redis.call('HSET', KEYS[1], 'events_max', cap)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', cap, '*', 'kind', 'run_finished',
  'feature', '', 'from', status, 'to', ARGV[2], 'percent', '', 'reason', ARGV[4],
  'worker', '', 'task_id', '', 'evidence', '{}', 'ts', ARGV[3])
local ttl = ARGV[7]
local prefix = ARGV[8]
for _, suffix in ipairs({'', ':plan', ':events', ':due', ':ready', ':testing'}) do
  redis.call('EXPIRE', prefix .. suffix, ttl)
end
for _, f in ipairs(names) do
  redis.call('EXPIRE', prefix .. ':feature:' .. f, ttl)
end
-- the runs index is trimmed with the runs: entries (scored by start time) older than the
-- TTL whose run hash has expired are dropped, at most 100 per finished run
local ns_run = string.sub(prefix, 1, #prefix - #ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[3]) - tonumber(ttl),
  'LIMIT', 0, 100)
for _, id in ipairs(old) do
  if redis.call('EXISTS', ns_run .. id) == 0 then redis.call('ZREM', KEYS[5], id) end
end
return {'FINISHED', ARGV[2]}
