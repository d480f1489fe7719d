-- dispatch.lua — pick the best-ranked ready features that fit the free TESTING slots and
-- mark them dispatched, in one step (so two dispatchers never pick past the limit).
--
-- KEYS[1] ready zset    <ns>:run:<id>:ready
-- KEYS[2] testing set   <ns>:run:<id>:testing
-- KEYS[3] freeze key    <ns>:freeze
-- KEYS[4] run hash      <ns>:run:<id>
-- ARGV[1] now (unix s)   ARGV[2] grace (s): a dispatch younger than this is still in flight
-- ARGV[3] feature key prefix <ns>:run:<id>:feature:
--
-- Returns the features to send a test step for (possibly none). A feature dispatched
-- within its grace period counts as occupying a slot; once older, it is sent again. The
-- grace doubles with every re-send of the same dispatch (grace, 2x, 4x, capped at 16x:
-- field ``dispatches``), so a long broker queue is not flooded with copies of messages
-- that are still in it; entering TESTING (or an operator's retry) resets both fields.
-- A ready entry that cannot start (not DISABLED, quarantined, blocked, dependencies
-- pending: a late write) is dropped from the queue instead of holding a slot.
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local run = redis.call('HMGET', KEYS[4], 'status', 'stopping', 'max_parallel')
if run[1] ~= 'RUNNING' or run[2] == '1' then return {} end
local limit = tonumber(run[3] or '1')
local free = limit - redis.call('SCARD', KEYS[2])
if free <= 0 then return {} end
local names = redis.call('ZRANGE', KEYS[1], 0, free + limit - 1)
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
local idle = {}
for _, name in ipairs(names) do
  local f = redis.call('HMGET', ARGV[3] .. name, 'dispatched_at', 'state', 'quarantined',
    'blocked', 'pending', 'dispatches')
  local at = tonumber(f[1] or '')
  local sent = tonumber(f[6] or '0') or 0
  local wait = grace * math.min(2 ^ math.max(sent - 1, 0), 16)
  if f[2] ~= 'DISABLED' or f[3] == '1' or f[4] == '1' or tonumber(f[5] or '0') > 0 then
    redis.call('ZREM', KEYS[1], name)
  elseif at and now - at < wait then free = free - 1 else table.insert(idle, name) end
end
local out = {}
for _, name in ipairs(idle) do
  if free <= 0 then break end
  redis.call('HSET', ARGV[3] .. name, 'dispatched_at', ARGV[1])
  redis.call('HINCRBY', ARGV[3] .. name, 'dispatches', 1)
  table.insert(out, name)
  free = free - 1
end
return out
