-- dispatch.lua — pick the best-ranked ready features that fit the free TESTING slots and
-- mark them dispatched, in one step (so two dispatchers never pick past the limit).
--
-- KEYS[1] ready zset    <ns>:run:<id>:ready
-- KEYS[2] testing set   <ns>:run:<id>:testing
-- KEYS[3] freeze key    <ns>:freeze
-- KEYS[4] run hash      <ns>:run:<id>
-- ARGV[1] now (unix s)   ARGV[2] grace (s): a dispatch younger than this is still in flight
-- ARGV[3] feature key prefix <ns>:run:<id>:feature:
-- ARGV[4] idle_at: when the broker queue the test steps go to was seen empty (its list and
--         priority sub-lists, looked at just before this call; "" = not looked at now)
-- ARGV[5] redelivery (s): the broker's visibility timeout ("" = the broker cannot be
--         looked at: the backoff rule below)
--
-- Returns the features to send a test step for (possibly none). A feature dispatched
-- and not started holds its slot until its message is known to have left the queue:
--   * with a broker view (ARGV[5] set), a message is taken from a FIFO queue once the
--     queue was seen empty at least half a grace after the dispatch (the send follows this
--     script at once); that moment is kept (field ``taken_at``). Half a grace after it, a
--     feature still not started was lost (a taken test step claims its feature within
--     milliseconds; a dead worker's unacked copy comes back only after the visibility
--     timeout) and is sent again. A message is never copied while it may still wait in
--     the queue, however long the queue; if the queue never empties, a dispatch is re-sent
--     once per ARGV[5] at most (as the broker itself re-delivers a dead worker's message).
--   * without one, a dispatch older than its grace is sent again; the grace doubles with
--     every re-send (grace, 2x, 4x, capped at 16x: field ``dispatches``).
-- Entering TESTING (or an operator's retry) resets ``dispatched_at``/``dispatches``.
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
local idle_at = tonumber(ARGV[4] or '')
local redelivery = tonumber(ARGV[5] or '')
local idle = {}
for _, name in ipairs(names) do
  local key = ARGV[3] .. name
  local f = redis.call('HMGET', key, 'dispatched_at', 'state', 'quarantined',
    'blocked', 'pending', 'dispatches', 'taken_at')
  local at = tonumber(f[1] or '')
  if f[2] ~= 'DISABLED' or f[3] == '1' or f[4] == '1' or tonumber(f[5] or '0') > 0 then
    redis.call('ZREM', KEYS[1], name)
  elseif not at then
    table.insert(idle, name)
  else
    local resend
    if redelivery then
      local taken = tonumber(f[7] or '')
      if taken and taken < at then taken = nil end
      if not taken and idle_at and idle_at - at >= grace / 2 then
        taken = idle_at
        redis.call('HSET', key, 'taken_at', ARGV[4])
      end
      resend = (taken ~= nil and now - taken >= grace / 2) or now - at >= redelivery
    else
      local sent = tonumber(f[6] or '0') or 0
      resend = now - at >= grace * math.min(2 ^ math.max(sent - 1, 0), 16)
    end
    if resend then table.insert(idle, name) else free = free - 1 end
  end
end
local out = {}
for _, name in ipairs(idle) do
  if free <= 0 then break end
  redis.call('HSET', ARGV[3] .. name, 'dispatched_at', ARGV[1], 'taken_at', '')
  redis.call('HINCRBY', ARGV[3] .. name, 'dispatches', 1)
  table.insert(out, name)
  free = free - 1
end
return out
