-- pop_due.lua — take the features whose next action is due, pushing each one's due time
-- forward by a grace period so a second beat (or the next tick) does not take it again
-- while its task is queued; if that task is lost, the feature comes due again after grace.
--
-- KEYS[1] due zset  <ns>:run:<id>:due
-- ARGV[1] now (unix s)  ARGV[2] grace (s)  ARGV[3] limit
--
-- Returns the due feature names.
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, name in ipairs(items) do redis.call('ZADD', KEYS[1], 'XX', later, name) end
return items
