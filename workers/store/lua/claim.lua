-- claim.lua — take the lease on one feature of one run and issue a new fencing token.
--
-- KEYS[1] lease          <ns>:run:<id>:lease:<name>   ("<token> <worker>", PX ttl)
-- KEYS[2] fence counter  <ns>:fence                    (global, monotonic)
-- KEYS[3] feature hash   <ns>:run:<id>:feature:<name>
-- ARGV[1] worker id   ARGV[2] lease ttl (ms)   ARGV[3] "1" = take over a live lease
--
-- Returns the new token. Errors: LEASE <holder> (a live lease, not forced), NOFEATURE.
-- To read the feature under the new lease, queue an HGETALL after this script in the
-- same pipeline (RedisStore.claim_record), not inside it: Redis copies a hash read in a
-- script into a Lua table and back out, which cost four times the rest of this script.
-- Every claim bumps the token, so a writer holding an older one is refused by transition.lua.
-- Tokens never go below the server clock in microseconds: if Redis restarts having lost
-- its last writes (AOF everysec), the counter restarts above every token it handed out
-- before (claims are far rarer than one per microsecond), so no token is issued twice.
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('NOFEATURE') end
local holder = redis.call('GET', KEYS[1])
if holder and ARGV[3] ~= '1' then return redis.error_reply('LEASE ' .. holder) end
local token = redis.call('INCR', KEYS[2])
local clock = redis.call('TIME')
local floor = tonumber(clock[1]) * 1000000 + tonumber(clock[2])  -- < 2^53: exact
if token < floor then
  token = floor
  redis.call('SET', KEYS[2], string.format('%d', token))
end
local text = string.format('%d', token)
redis.call('SET', KEYS[1], text .. ' ' .. ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[3], 'token', text)
return token
