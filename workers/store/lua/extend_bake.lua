-- extend_bake.lua — raise a run's bake end (the run ends no earlier), never lower it.
--
-- KEYS[1] run hash   <ns>:run:<id>
-- ARGV[1] a promoted feature's bake end (unix s)
--
-- Returns 1 when raised, 0 when the run already bakes at least that long.
local cur = tonumber(redis.call('HGET', KEYS[1], 'bake_until') or '0') or 0
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'bake_until', ARGV[1])
  return 1
end
return 0
