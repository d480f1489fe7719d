-- claim.lua — take the lease on one feature of one run and issue a new fencing token.
--
-- KEYS[1] lease          <ns>:run:<id>:lease:<name>   ("<token> <worker>", PX ttl)
-- KEYS[2] fence counter  <ns>:fence                    (global, monotonic)
-- KEYS[3] feature hash   <ns>:run:<id>:feature:<name>
-- ARGV[1] worker id   ARGV[2] lease ttl (ms)   ARGV[3] "1" = take over a live lease
--
-- Returns the new token. Errors: LEASE <holder> (a live lease, not forced), NOFEATURE.
-- Every claim bumps the token, so a writer holding an older one is refused by transition.lua.
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('NOFEATURE') end
local holder = redis.call('GET', KEYS[1])
if holder and ARGV[3] ~= '1' then return redis.error_reply('LEASE ' .. holder) end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[3], 'token', token)
return token
