-- update.lua — fenced write of bookkeeping fields on one feature (no state change).
--
-- KEYS[1] feature hash  <ns>:run:<id>:feature:<name>
-- KEYS[2] due zset      <ns>:run:<id>:due
-- KEYS[3] ready zset    <ns>:run:<id>:ready
-- ARGV[1] fencing token ("" = no check: run-level bookkeeping by the store itself)
-- ARGV[2] fields (JSON object)    ARGV[3] due time ("" = leave, "-" = remove)
-- ARGV[4] feature name            ARGV[5] expected version ("" = any)
-- ARGV[6] ready rank ("" = leave, "-" = remove from ready)
--
-- A ready rank is written only for a feature that can start (DISABLED, not quarantined,
-- not blocked, no pending dependency); otherwise the feature leaves the ready queue, so a
-- late or stale requeue can never put a feature there that a test step would skip.
-- Returns the feature's version. Errors: NOFEATURE, STALE <token>, CHANGED <state> <version>.
local cur = redis.call('HMGET', KEYS[1], 'state', 'token', 'version', 'quarantined',
  'blocked', 'pending')
if not cur[1] then return redis.error_reply('NOFEATURE ' .. ARGV[4]) end
if ARGV[1] ~= '' and cur[2] ~= ARGV[1] then return redis.error_reply('STALE ' .. tostring(cur[2])) end
if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= tonumber(cur[3] or '0') then
  return redis.error_reply('CHANGED ' .. cur[1] .. ' ' .. tostring(cur[3]))
end
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], k, tostring(v)) end
if ARGV[3] == '-' then redis.call('ZREM', KEYS[2], ARGV[4])
elseif ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
if ARGV[6] == '-' then redis.call('ZREM', KEYS[3], ARGV[4])
elseif ARGV[6] ~= '' then
  if cur[1] == 'DISABLED' and cur[4] ~= '1' and cur[5] ~= '1' and tonumber(cur[6] or '0') == 0 then
    redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
  else
    redis.call('ZREM', KEYS[3], ARGV[4])
  end
end
return tonumber(cur[3] or '0')
