-- release.lua — drop a lease only if the caller still holds it.
--
-- KEYS[1] lease  <ns>:run:<id>:lease:<name>
-- ARGV[1] token
--
-- Returns 1 when the caller held the lease, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if not holder or string.sub(holder, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
redis.call('DEL', KEYS[1])
return 1
