-- recount.lua — recompute a run's counters from its feature records, atomically.
--
-- KEYS[1] run hash   <ns>:run:<id>
-- ARGV[1] feature key prefix <ns>:run:<id>:feature:   ARGV[2] features (JSON list of names)
--
-- enabled = features ENABLED; quarantined = DISABLED features quarantined; blocked =
-- DISABLED features blocked and not quarantined. A feature that is on but not ENABLED
-- (TESTING) counts in none, so the run is never settled while one is. The counters are
-- kept incrementally by the other scripts; this is the repair when they drifted.
-- Returns {enabled, quarantined, blocked, changed 0/1}.
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NORUN') end
local enabled, quarantined, blocked = 0, 0, 0
for _, name in ipairs(cjson.decode(ARGV[2])) do
  local f = redis.call('HMGET', ARGV[1] .. name, 'state', 'quarantined', 'blocked')
  if f[1] == 'ENABLED' then
    enabled = enabled + 1
  elseif f[1] == 'DISABLED' then
    if f[2] == '1' then quarantined = quarantined + 1
    elseif f[3] == '1' then blocked = blocked + 1 end
  end
end
local cur = redis.call('HMGET', KEYS[1], 'enabled', 'quarantined', 'blocked')
local changed = 0
if tonumber(cur[1] or '0') ~= enabled or tonumber(cur[2] or '0') ~= quarantined
    or tonumber(cur[3] or '0') ~= blocked then
  changed = 1
  redis.call('HSET', KEYS[1], 'enabled', enabled, 'quarantined', quarantined, 'blocked', blocked)
end
return {enabled, quarantined, blocked, changed}
