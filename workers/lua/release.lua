-- release.lua — drop a lease only if the caller still holds it.
--
-- KEYS[1] lease  <ns>:run:<id>:lease:<name>
-- ARGV[1] token  ARGV[2] "1" = renew for ARGV[3] ms instead of dropping
--
-- Returns 1 when the caller held the lease, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if not holder or string.sub(holder, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
if ARGV[2] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
