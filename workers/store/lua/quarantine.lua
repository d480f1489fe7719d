-- quarantine.lua — mark a feature quarantined (stays DISABLED, needs an operator) and its
-- transitive dependents blocked, once.
--
-- KEYS[1] feature hash   <ns>:run:<id>:feature:<name>
-- KEYS[2] run hash       <ns>:run:<id>
-- KEYS[3] events stream  <ns>:run:<id>:events
-- KEYS[4] ready zset     <ns>:run:<id>:ready
-- KEYS[5] due zset       <ns>:run:<id>:due
-- ARGV[1] fencing token   ARGV[2] feature name   ARGV[3] reason   ARGV[4] now
-- ARGV[5] feature key prefix   ARGV[6] transitive dependents (JSON list)
-- ARGV[7] worker   ARGV[8] task id   ARGV[9] evidence (JSON)   ARGV[10] events max length
--
-- Returns {newly blocked count} or {-1} when already quarantined. Errors: STALE, NOFEATURE.
local cur = redis.call('HMGET', KEYS[1], 'state', 'token', 'quarantined', 'blocked')
if not cur[1] then return redis.error_reply('NOFEATURE ' .. ARGV[2]) end
if cur[2] ~= ARGV[1] then return redis.error_reply('STALE ' .. tostring(cur[2])) end
if cur[3] == '1' then return {-1} end
redis.call('HSET', KEYS[1], 'quarantined', 1, 'reason', ARGV[3], 'updated_at', ARGV[4],
  'hold', '', 'awaiting', '')
-- a feature counts once: quarantined now, no longer blocked
if cur[4] == '1' then
  redis.call('HSET', KEYS[1], 'blocked', 0)
  redis.call('HINCRBY', KEYS[2], 'blocked', -1)
end
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'quarantined', 1)
local blocked = 0
for _, d in ipairs(cjson.decode(ARGV[6])) do
  local dkey = ARGV[5] .. d
  local ds = redis.call('HMGET', dkey, 'state', 'blocked', 'quarantined')
  if ds[1] == 'DISABLED' and ds[2] ~= '1' and ds[3] ~= '1' then
    redis.call('HSET', dkey, 'blocked', 1, 'reason', 'blocked_by:' .. ARGV[2])
    redis.call('ZREM', KEYS[4], d)
    redis.call('ZREM', KEYS[5], d)
    blocked = blocked + 1
  end
end
redis.call('HINCRBY', KEYS[2], 'blocked', blocked)
-- the audit cap: the store's default, or the run's own cap (events_max) if larger;
-- a non-transition event raises the run's cap by one (nothing of the run is trimmed)
local cap = math.max(tonumber(ARGV[10]), tonumber(redis.call('HGET', KEYS[2], 'events_max') or '0') or 0) + 1
redis.call('HSET', KEYS[2], 'events_max', cap)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', 'kind', 'quarantined',
  'feature', ARGV[2], 'from', cur[1], 'to', cur[1], 'percent', '', 'reason', ARGV[3],
  'worker', ARGV[7], 'task_id', ARGV[8], 'evidence', ARGV[9], 'ts', ARGV[4])
return {blocked}
