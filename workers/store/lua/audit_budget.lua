-- audit_budget.lua — raise a run's audit-stream cap to what the run can write, never lower.
--
-- KEYS[1] run hash   <ns>:run:<id>
-- ARGV[1] events the run may append (its budget)
--
-- The scripts that append to the run's stream trim it to the larger of the store's
-- ``events_maxlen`` and this budget (field ``events_max``), so a big run keeps its whole
-- history until the run's keys expire. Returns the cap now in force for the run.
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NORUN') end
local cur = tonumber(redis.call('HGET', KEYS[1], 'events_max') or '0') or 0
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('HSET', KEYS[1], 'events_max', want)
  return want
end
return cur
