-- append_event.lua — append a non-transition event (health, hold, freeze, retry
-- scheduled, run status, …) to a run's audit stream, raising the run's cap by one.
--
-- KEYS[1] run hash        <ns>:run:<id>
-- KEYS[2] events stream   <ns>:run:<id>:events
-- ARGV[1] the store's events max length (events_maxlen)
-- ARGV[2…] the event's field/value pairs
--
-- The run's stream keeps the larger of events_maxlen and the run's own cap (field
-- ``events_max``, sized at the start to what the run's transitions can write, see
-- audit_budget.lua). Every non-transition event raises that cap by one in the same
-- script, so no amount of operators' activity (a freeze/unfreeze storm, pause/resume)
-- ever trims an event of the run. A run whose hash is gone (expired) gets its event
-- appended with the store's cap, and no hash is created. Returns the cap now in force.
local cap = math.max(tonumber(ARGV[1]),
  tonumber(redis.call('HGET', KEYS[1], 'events_max') or '0') or 0)
if redis.call('EXISTS', KEYS[1]) == 1 then
  cap = cap + 1
  redis.call('HSET', KEYS[1], 'events_max', cap)
end
local fields = {}
for i = 2, #ARGV do fields[i - 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', cap, '*', unpack(fields))
return cap
