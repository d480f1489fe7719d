#!lua name=recovery_metrics
-- metrics.lua — the one metrics writer: a Redis Function library (FUNCTION LOAD, FCALL).
-- Loaded by workers.store.metrics.load_library (see docs/flags.md, "Metrics ingestion").
--
-- FCALL recovery_metrics_add <n> KEYS... ARGV...
-- KEYS[1]    <ns>:metrics:arrived                stream: one entry per call that applied
--                                                 counts, field "features" = the features
--                                                 (space-separated); capped at ~1000
-- KEYS[1+i]  <ns>:metrics:<feature>:<tick>       the i-th entry's tick hash (declared, so
--                                                 ACL key patterns and Cluster slots apply)
-- ARGV[1]  protocol version "2" (or "1": without ARGV[5], ticks taken as given)
-- ARGV[2]  namespace <ns>
-- ARGV[3]  tick_s, 1..3600
-- ARGV[4]  ttl_s, 10..86400 (the TTL every written key gets; never shortened)
-- ARGV[5]  protocol "2" only: the caller's "now", unix milliseconds by the same clock its
--          entries' ticks were taken from (an integer 0..99999999999999)
-- ARGV[5…] ("1"), ARGV[6…] ("2"): per entry, in KEYS order: feature, tick, field count m,
--          then m pairs field, count
--          feature  [a-z0-9][a-z0-9._-]*, at most 64 bytes (the plan's name rule)
--          field    requests | errors | slow | bad:<name>, each optionally prefixed ctl:
--                   (the control cohort); <name> [A-Za-z0-9_.-]{1,64}
--          count    an integer 0..1000000000 (any Lua number literal of one)
--
-- Validates the whole call before writing anything. A malformed call is refused with
-- error "INVALID <reason>" and nothing written. Then each entry is checked against Redis
-- and applied whole or not at all; the reply has one status per entry, in order:
--   "OK"        applied (every non-zero field and "requests" HINCRBY'd; a key without
--               TTL gets ttl_s)
--   "TICK"      the tick (shifted, protocol "2") starts more than 60 s after now by
--               Redis's clock, or is before tick 0 (not applied)
--   "WRONGTYPE" the key exists and is not a hash (not applied)
--   "NOTINT"    a field already holds a non-integer (not applied: counts unchanged)
--   "OVERFLOW"  a field would leave int64 (not applied: counts unchanged)
-- Applied entries' features are announced in the stream KEYS[1] (each feature once per
-- call), so the engine may evaluate as counts arrive (XREAD BLOCK on it).
-- Nothing is ever retried by the caller for an entry that got a status: "OK" is done, the
-- others can never apply.
--
-- One clock (protocol "2"): the tick a count lands in is decided by Redis's clock, not the
-- caller's. Every entry's tick is shifted by round((Redis now - caller now) / tick_s) ticks
-- (the caller's clock offset, in whole ticks), so a service whose clock is 30 s behind or
-- ahead still writes the ticks the evaluator reads now. The KEYS still name the caller's
-- ticks (validated as above); the function writes the shifted tick's key, under the same
-- <ns>:metrics:<feature>: prefix (so per-feature ACL key patterns still apply). Protocol
-- "1" (kept for clients in other languages) writes the ticks as given.

local MAX_ENTRIES = 1000
local MAX_FIELDS = 64
local MAX_COUNT = 1000000000
local SKEW_S = 60
local BASE = {requests = true, errors = true, slow = true}
local FIXED = {requests = true, errors = true, slow = true,
  ['ctl:requests'] = true, ['ctl:errors'] = true, ['ctl:slow'] = true}

local function valid_name(name)
  return #name >= 1 and #name <= 64 and string.find(name, '^[%w_%.%-]+$') ~= nil
end

local function valid_field(field)
  if FIXED[field] then return true end
  local rest = field
  if string.sub(rest, 1, 4) == 'ctl:' then rest = string.sub(rest, 5) end
  if BASE[rest] then return true end
  return string.sub(rest, 1, 4) == 'bad:' and valid_name(string.sub(rest, 5))
end

local function valid_feature(feature)
  return #feature <= 64 and string.find(feature, '^[a-z0-9][a-z0-9_%.%-]*$') ~= nil
end

local function bounded(text, lo, hi)
  if type(text) ~= 'string' or #text > 12 or string.find(text, '^%d+$') == nil then
    return nil
  end
  local n = tonumber(text)
  if n < lo or n > hi then return nil end
  return n
end

local function add(all_keys, args)
  if args[1] ~= '1' and args[1] ~= '2' then
    return redis.error_reply('INVALID protocol ' .. tostring(args[1]))
  end
  local ns = args[2]
  if type(ns) ~= 'string' or #ns < 1 or #ns > 64 or string.find(ns, '[%s%c]') then
    return redis.error_reply('INVALID namespace')
  end
  local tick_s = bounded(args[3], 1, 3600)
  local ttl_s = bounded(args[4], 10, 86400)
  if not tick_s or not ttl_s then return redis.error_reply('INVALID tick_s or ttl_s') end
  if all_keys[1] ~= ns .. ':metrics:arrived' then
    return redis.error_reply('INVALID arrival stream key')
  end
  local keys = {}
  for k = 2, #all_keys do keys[k - 1] = all_keys[k] end
  if #keys < 1 or #keys > MAX_ENTRIES then
    return redis.error_reply('INVALID entry count ' .. #keys)
  end
  -- 1. the shape of the whole call
  local function invalid(what, e)
    return redis.error_reply('INVALID ' .. what .. ' (entry ' .. e .. ')')
  end
  local prefix = ns .. ':metrics:'
  local entries, seen, i = {}, {}, 5
  -- one clock: the caller's offset from Redis's clock, in whole ticks (protocol "2")
  local redis_time = redis.call('TIME')
  local shift = 0
  if args[1] == '2' then
    local caller_ms = args[5]
    if type(caller_ms) ~= 'string' or #caller_ms > 14 or string.find(caller_ms, '^%d+$') == nil then
      return redis.error_reply('INVALID now')
    end
    local redis_ms = tonumber(redis_time[1]) * 1000 + math.floor(tonumber(redis_time[2]) / 1000)
    shift = math.floor((redis_ms - tonumber(caller_ms)) / (tick_s * 1000) + 0.5)
    i = 6
  end
  for e = 1, #keys do
    local feature, tick_text, m_text = args[i], args[i + 1], args[i + 2]
    if type(feature) ~= 'string' or not valid_feature(feature) then
      return invalid('feature', e)
    end
    -- canonical decimal: no sign, no leading zero
    local tick = bounded(tick_text, 0, 999999999999)
    if not tick or (#tick_text > 1 and string.sub(tick_text, 1, 1) == '0') then
      return invalid('tick', e)
    end
    local key = keys[e]
    if key ~= prefix .. feature .. ':' .. tick_text then return invalid('key', e) end
    if seen[key] then return invalid('duplicate key', e) end
    seen[key] = true
    local m = tonumber(m_text)
    if not m or m < 1 or m > MAX_FIELDS or m % 1 ~= 0 then return invalid('field count', e) end
    local fields, counts = {}, {}
    for f = 1, m do
      local field, count = args[i + 1 + 2 * f], args[i + 2 + 2 * f]
      if type(field) ~= 'string' or not valid_field(field) then return invalid('field', e) end
      for g = 1, f - 1 do
        if fields[g] == field then return invalid('field', e) end
      end
      -- any number literal of an integer in range (it is written as that integer)
      local n = tonumber(count)
      if not n or n < 0 or n > MAX_COUNT or n % 1 ~= 0 then return invalid('count', e) end
      fields[f], counts[f] = field, n
    end
    if shift ~= 0 then
      -- the tick by Redis's clock (a shift before 0 is refused below as a bad tick)
      tick = tick + shift
      key = prefix .. feature .. ':' .. string.format('%d', tick)
    end
    entries[e] = {key = key, feature = feature, tick = tick, fields = fields, counts = counts}
    i = i + 3 + 2 * m
  end
  if i ~= #args + 1 then return redis.error_reply('INVALID trailing arguments') end

  -- 2. apply each entry whole or not at all: an increment Redis refuses (the key is not a
  -- hash, the field is not an integer, int64 overflow) undoes the entry's earlier ones
  local now = tonumber(redis_time[1])
  local status, arrived, announced = {}, {}, {}
  for e, entry in ipairs(entries) do
    if entry.tick < 0 or entry.tick * tick_s > now + SKEW_S then
      -- a tick that has not begun (beyond clock skew) would sit in wait for its reader:
      -- refused, so nobody can pre-load evidence; past ticks are fine, the TTL ends them
      status[e] = 'TICK'
    else
      status[e] = 'OK'
      for f, field in ipairs(entry.fields) do
        -- a zero adds nothing (a missing field reads as 0), but "requests" is always
        -- written: requests 0 is the heartbeat
        local res = 0
        if entry.counts[f] > 0 or field == 'requests' then
          res = redis.pcall('HINCRBY', entry.key, field, entry.counts[f])
        end
        if type(res) == 'table' and res.err then
          local err = res.err
          if string.find(err, 'WRONGTYPE', 1, true) then
            status[e] = 'WRONGTYPE'
          elseif string.find(err, 'overflow', 1, true) then
            status[e] = 'OVERFLOW'
          else
            status[e] = 'NOTINT'
          end
          for g = 1, f - 1 do
            if entry.counts[g] > 0 then
              redis.call('HINCRBY', entry.key, entry.fields[g], -entry.counts[g])
            end
          end
          break
        end
      end
      if status[e] ~= 'WRONGTYPE' then
        -- the TTL is set once, when the key has none (never shortened, never extended)
        redis.call('EXPIRE', entry.key, ttl_s, 'NX')
      end
      if status[e] == 'OK' and not announced[entry.feature] then
        announced[entry.feature] = true
        table.insert(arrived, entry.feature)
      end
    end
  end
  if #arrived > 0 then
    redis.call('XADD', all_keys[1], 'MAXLEN', '~', '1000', '*', 'features',
      table.concat(arrived, ' '))
  end
  return status
end

redis.register_function('recovery_metrics_add', add)
