#!lua name=recovery_metrics
-- metrics.lua — the one metrics writer: a Redis Function library (FUNCTION LOAD, FCALL).
-- Loaded by workers.store.metrics.load_library (see docs/flags.md, "Metrics ingestion").
-- Two functions share one validation (check_entry) and one writer (apply):
--   recovery_metrics_add    a trusted writer's counts, given as arguments (workers, tools)
--   recovery_metrics_drain  a worker moves the services' inbox messages into the layout
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
--          entries' ticks were taken from (an integer of at most 14 digits)
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
--   "TICK"      the tick (shifted: see "One clock") starts more than 60 s after now by
--               Redis's clock, or before tick 0 (not applied)
--   "WRONGTYPE" the key exists and is not a hash (not applied)
--   "NOTINT"    a field already holds a non-integer (not applied: counts unchanged)
--   "OVERFLOW"  a field would leave int64 (not applied: counts unchanged)
-- Applied entries' features are announced in the stream KEYS[1] (each feature once per
-- call), so the engine may evaluate as counts arrive (XREAD BLOCK on it).
-- Nothing is ever retried by the caller for an entry that got a status: "OK" is done, the
-- others can never apply.
--
-- One clock: the tick a count lands in is decided by Redis's clock, not the writer's. A
-- writer counts per tick of its own clock and says what its clock read when it sent them
-- ("now", unix ms: add's ARGV[5] in protocol "2", an inbox message's field "n" in format
-- "2"); every entry's tick is moved by round((Redis's ms - now) / (1000 * tick_s)) — the
-- writer's clock offset in whole ticks, Redis's ms being TIME for add and the message's
-- stream id (the moment it was appended) for the drain. So a service 30 s behind or ahead
-- still reports into the ticks the evaluator reads now. KEYS and messages name the
-- writer's ticks (validated as such); the key written is the shifted tick's, under the
-- same <ns>:metrics:<feature>: prefix. Protocol/format "1" writes the ticks as given.
--
-- FCALL recovery_metrics_drain 3 KEYS... ARGV...
-- KEYS[1]  <ns>:metrics:arrived            as above (one entry per call that applied)
-- KEYS[2]  <ns>:metrics:services           hash: service -> its features, space-separated
--                                          (written by operators; per-service inboxes);
--                                          service names [a-z][a-z0-9._-]{0,63}
-- KEYS[3]  <ns>:metrics:inbox              stream: the shared inbox services XADD to
-- (read, undeclared: <ns>:metrics:inbox:<service> for every field of KEYS[2], and the
--  tick hashes the messages name — all under <ns>, so one hash tag on Redis Cluster)
-- ARGV[1]  protocol version "1"
-- ARGV[2]  namespace <ns>
-- ARGV[3]  tick_s, 1..3600: messages reported with another tick length are dropped
-- ARGV[4]  ttl_s, 10..86400, as for add
-- ARGV[5]  max messages this call reads, 1..10000
-- ARGV[6]  max bytes this call reads, 1..67108864 (at least one message is read)
-- ARGV[7]  max entries this call applies, 1..100000 (at least one message is applied)
-- ARGV[8]  inbox cap: after the call each inbox is trimmed to this many messages
-- ARGV[9]  rotation: the inbox read first is number (rotation mod inboxes), for fairness
-- An inbox message (the published contract, docs/flags.md "The metrics inbox") has fields
--   v  "2"     the format version ("1": without n, ticks taken as given)
--   t  tick_s  the writer's tick length (decimal)
--   n  now     format "2": the writer's clock when it sent the message, unix ms (decimal,
--              at most 14 digits); the ticks are moved onto Redis's clock (see "One clock")
--   e  JSON    [[feature, tick, {field: count, ...}], ...], 1..1000 entries, at most
--              1 MiB per message; the same rules as add (a tick is a JSON integer)
-- other fields are ignored. Each message read is deleted in the same call (exactly once:
-- applied or dropped, never both, never twice). A message that is not valid as a whole
-- (version, fields, JSON, shape, any rule above, a key twice) is dropped whole; then each
-- entry is applied or rejected as for add (after the shift), and in a per-service inbox an entry naming a
-- feature not registered for the service is rejected ("SCOPE"). An emptied inbox is
-- deleted (its id sequence starts afresh: a writer's explicit id cannot block the "*" ids
-- of the others for longer than one drain).
-- Reply: {read, applied, more, {reason, messages, ...}, {status, entries, ...}}
--   read     messages read (and deleted) from the inboxes
--   applied  entries applied
--   more     1 when an inbox still holds messages (call again), else 0
--   dropped messages per reason: "version", "tick_s", "size", "json", "shape", "now",
--            "trimmed" (beyond the inbox cap, oldest first)
--   rejected entries per status: "TICK", "WRONGTYPE", "NOTINT", "OVERFLOW", "SCOPE"

local MAX_ENTRIES = 1000
local MAX_FIELDS = 64
local MAX_COUNT = 1000000000
local MAX_TICK = 999999999999
local MAX_MESSAGE_BYTES = 1048576
local SKEW_S = 60
local BASE = {requests = true, errors = true, slow = true}
local FIXED = {requests = true, errors = true, slow = true,
  ['ctl:requests'] = true, ['ctl:errors'] = true, ['ctl:slow'] = true}

local function valid_name(name)
  return #name >= 1 and #name <= 64 and string.find(name, '^[%w_%.%-]+$') ~= nil
end

local function valid_field(field)
  if type(field) ~= 'string' then return false end
  if FIXED[field] then return true end
  local rest = field
  if string.sub(rest, 1, 4) == 'ctl:' then rest = string.sub(rest, 5) end
  if BASE[rest] then return true end
  return string.sub(rest, 1, 4) == 'bad:' and valid_name(string.sub(rest, 5))
end

local function valid_feature(feature)
  return type(feature) == 'string' and #feature <= 64
    and string.find(feature, '^[a-z0-9][a-z0-9_%.%-]*$') ~= nil
end

local function valid_count(n)
  return type(n) == 'number' and n >= 0 and n <= MAX_COUNT and n % 1 == 0
end

local function bounded(text, lo, hi)
  if type(text) ~= 'string' or #text > 12 or string.find(text, '^%d+$') == nil then
    return nil
  end
  local n = tonumber(text)
  if n < lo or n > hi then return nil end
  return n
end

-- the namespace, tick_s and ttl_s of a call, or nil and the error
local function check_params(ns, tick_text, ttl_text)
  if type(ns) ~= 'string' or #ns < 1 or #ns > 64 or string.find(ns, '[%s%c]') then
    return nil, 'INVALID namespace'
  end
  local tick_s = bounded(tick_text, 1, 3600)
  local ttl_s = bounded(ttl_text, 10, 86400)
  if not tick_s or not ttl_s then return nil, 'INVALID tick_s or ttl_s' end
  return tick_s, ttl_s
end

-- One entry, checked by every rule (the one definition both functions use): the feature,
-- the canonical decimal tick, its key (unique in ``seen``), the fields and counts.
-- Returns the entry to apply, or nil and what is wrong.
local function check_entry(prefix, feature, tick_text, fields, counts, seen)
  if not valid_feature(feature) then return nil, 'feature' end
  -- canonical decimal: no sign, no leading zero
  local tick = bounded(tick_text, 0, MAX_TICK)
  if not tick or (#tick_text > 1 and string.sub(tick_text, 1, 1) == '0') then
    return nil, 'tick'
  end
  local key = prefix .. feature .. ':' .. tick_text
  if seen[key] then return nil, 'duplicate key' end
  seen[key] = true
  if #fields < 1 or #fields > MAX_FIELDS then return nil, 'field count' end
  for f, field in ipairs(fields) do
    if not valid_field(field) then return nil, 'field' end
    for g = 1, f - 1 do
      if fields[g] == field then return nil, 'field' end
    end
    if not valid_count(counts[f]) then return nil, 'count' end
  end
  return {key = key, feature = feature, tick = tick, fields = fields, counts = counts}
end

-- One clock: the whole ticks to move a writer's ticks by, from its clock's "now" (decimal
-- unix ms, at most 14 digits) and Redis's ms at the moment it wrote; nil if ``now_text``
-- is malformed.
local function clock_shift(now_text, redis_ms, tick_s)
  if type(now_text) ~= 'string' or #now_text > 14 or string.find(now_text, '^%d+$') == nil then
    return nil
  end
  return math.floor((redis_ms - tonumber(now_text)) / (tick_s * 1000) + 0.5)
end

-- Move checked entries by ``shift`` ticks (their keys with them).
local function shift_entries(entries, shift, prefix)
  if shift == 0 then return end
  for _, entry in ipairs(entries) do
    entry.tick = entry.tick + shift
    entry.key = prefix .. entry.feature .. ':' .. string.format('%d', entry.tick)
  end
end

-- Apply checked entries, each whole or not at all: an increment Redis refuses (the key is
-- not a hash, the field is not an integer, int64 overflow) undoes the entry's earlier
-- ones. Sets status[e]; appends newly applied features to ``arrived`` (once each).
local function apply(entries, tick_s, ttl_s, now, status, arrived, announced)
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
end

local function announce(stream, arrived)
  if #arrived > 0 then
    redis.call('XADD', stream, 'MAXLEN', '~', '1000', '*', 'features',
      table.concat(arrived, ' '))
  end
end

local function add(all_keys, args)
  if args[1] ~= '1' and args[1] ~= '2' then
    return redis.error_reply('INVALID protocol ' .. tostring(args[1]))
  end
  local ns = args[2]
  local tick_s, ttl_s = check_params(ns, args[3], args[4])
  if not tick_s then return redis.error_reply(ttl_s) end
  if all_keys[1] ~= ns .. ':metrics:arrived' then
    return redis.error_reply('INVALID arrival stream key')
  end
  local n = #all_keys - 1
  if n < 1 or n > MAX_ENTRIES then
    return redis.error_reply('INVALID entry count ' .. n)
  end
  -- 1. the shape of the whole call
  local prefix = ns .. ':metrics:'
  local entries, seen, i = {}, {}, 5
  local time = redis.call('TIME')
  local shift = 0
  if args[1] == '2' then
    local redis_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    shift = clock_shift(args[5], redis_ms, tick_s)
    if not shift then return redis.error_reply('INVALID now') end
    i = 6
  end
  for e = 1, n do
    local feature, tick_text, m_text = args[i], args[i + 1], args[i + 2]
    local m = tonumber(m_text)
    if not m or m < 1 or m > MAX_FIELDS or m % 1 ~= 0 or i + 2 + 2 * m > #args then
      return redis.error_reply('INVALID field count (entry ' .. e .. ')')
    end
    -- any number literal of an integer in range (it is written as that integer)
    local fields, counts = {}, {}
    for f = 1, m do
      fields[f], counts[f] = args[i + 1 + 2 * f], tonumber(args[i + 2 + 2 * f])
    end
    local entry, what = check_entry(prefix, feature, tick_text, fields, counts, seen)
    if entry and all_keys[e + 1] ~= entry.key then entry, what = nil, 'key' end
    if not entry then
      return redis.error_reply('INVALID ' .. what .. ' (entry ' .. e .. ')')
    end
    entries[e] = entry
    i = i + 3 + 2 * m
  end
  if i ~= #args + 1 then return redis.error_reply('INVALID trailing arguments') end
  shift_entries(entries, shift, prefix)

  -- 2. apply each entry whole or not at all
  local now = tonumber(time[1])
  local status, arrived = {}, {}
  apply(entries, tick_s, ttl_s, now, status, arrived, {})
  announce(all_keys[1], arrived)
  return status
end

-- One inbox message's fields (a flat XRANGE list) checked as a whole: its entries and
-- size, or nil, the drop reason and its size.
local function parse_message(flat, prefix, tick_s, id)
  local size, v, t, e, n = 0, nil, nil, nil, nil
  for j = 1, #flat, 2 do
    local name, value = flat[j], flat[j + 1]
    size = size + #name + #value
    if name == 'v' then v = value elseif name == 't' then t = value elseif name == 'e' then
      e = value
    elseif name == 'n' then n = value
    end
  end
  if size > MAX_MESSAGE_BYTES then return nil, 'size', size end
  if v ~= '1' and v ~= '2' then return nil, 'version', size end
  if not t or not e then return nil, 'shape', size end
  -- one clock: the message's id is Redis's ms when it was appended
  local shift = 0
  if v == '2' then
    shift = clock_shift(n, tonumber(string.match(id, '^(%d+)')), tick_s)
    if not shift then return nil, 'now', size end
  end
  if t ~= tostring(tick_s) then return nil, 'tick_s', size end
  local ok, doc = pcall(cjson.decode, e)
  if not ok then return nil, 'json', size end
  if type(doc) ~= 'table' or #doc < 1 or #doc > MAX_ENTRIES then return nil, 'shape', size end
  local entries, seen = {}, {}
  for k, item in pairs(doc) do
    -- an array: keys 1..#doc only
    if type(k) ~= 'number' or k % 1 ~= 0 or k < 1 or k > #doc then return nil, 'shape', size end
    if type(item) ~= 'table' or #item ~= 3 then return nil, 'shape', size end
    local tick, map = item[2], item[3]
    if type(tick) ~= 'number' or tick < 0 or tick > MAX_TICK or tick % 1 ~= 0
      or type(map) ~= 'table' then
      return nil, 'shape', size
    end
    local fields, counts = {}, {}
    for field, count in pairs(map) do
      if #fields >= MAX_FIELDS then return nil, 'shape', size end
      table.insert(fields, field)
      table.insert(counts, count)
    end
    local entry = check_entry(prefix, item[1], string.format('%d', tick), fields, counts, seen)
    if not entry then return nil, 'shape', size end
    entries[k] = entry
  end
  shift_entries(entries, shift, prefix)
  return entries, nil, size
end

local function bump(counter, key, n)
  counter[key] = (counter[key] or 0) + n
end

local function flat_counts(counter)
  local out = {}
  for key, n in pairs(counter) do
    table.insert(out, key)
    table.insert(out, n)
  end
  return out
end

local function drain(all_keys, args)
  if args[1] ~= '1' then return redis.error_reply('INVALID protocol ' .. tostring(args[1])) end
  local ns = args[2]
  local tick_s, ttl_s = check_params(ns, args[3], args[4])
  if not tick_s then return redis.error_reply(ttl_s) end
  local max_messages = bounded(args[5], 1, 10000)
  local max_bytes = bounded(args[6], 1, 67108864)
  local max_entries = bounded(args[7], 1, 100000)
  local cap = bounded(args[8], 1, 10000000)
  local rotation = bounded(args[9], 0, 999999999999)
  if not max_messages or not max_bytes or not max_entries or not cap or not rotation then
    return redis.error_reply('INVALID bounds')
  end
  local prefix = ns .. ':metrics:'
  if all_keys[1] ~= prefix .. 'arrived' or all_keys[2] ~= prefix .. 'services'
    or all_keys[3] ~= prefix .. 'inbox' then
    return redis.error_reply('INVALID keys')
  end
  -- the inboxes: the shared one (any feature), then one per registered service
  local inboxes = {{key = all_keys[3]}}
  local services = redis.call('HGETALL', all_keys[2])
  for j = 1, #services, 2 do
    local allowed = {}
    for feature in string.gmatch(services[j + 1], '%S+') do allowed[feature] = true end
    -- a service name starts with a letter: its inbox can never be a tick hash
    -- (<ns>:metrics:<feature>:<digits>)
    if valid_feature(services[j]) and string.find(services[j], '^[a-z]') then
      table.insert(inboxes, {key = prefix .. 'inbox:' .. services[j], allowed = allowed})
    end
  end
  local now = tonumber(redis.call('TIME')[1])
  local read, applied, bytes, applied_entries = 0, 0, 0, 0
  local dropped, rejected, arrived, announced = {}, {}, {}, {}
  local first = rotation % #inboxes
  local function spent()
    return read >= max_messages or bytes >= max_bytes or applied_entries >= max_entries
  end
  for step = 0, #inboxes - 1 do
    if spent() then break end
    local inbox = inboxes[(first + step) % #inboxes + 1]
    local consumed, start = {}, '-'
    repeat
      -- pages of at most 100: a flood of huge messages is not all copied into Lua at once
      local page = math.min(100, max_messages - read)
      local messages = redis.call('XRANGE', inbox.key, start, '+', 'COUNT', page)
      for _, message in ipairs(messages) do
        if spent() then break end
        read = read + 1
        table.insert(consumed, message[1])
        start = '(' .. message[1]
        local entries, reason, size = parse_message(message[2], prefix, tick_s, message[1])
        bytes = bytes + size
        if not entries then
          bump(dropped, reason, 1)
        else
          local keep = {}
          for _, entry in ipairs(entries) do
            if inbox.allowed and not inbox.allowed[entry.feature] then
              bump(rejected, 'SCOPE', 1)
            else
              table.insert(keep, entry)
            end
          end
          local status = {}
          apply(keep, tick_s, ttl_s, now, status, arrived, announced)
          applied_entries = applied_entries + #keep
          for _, s in ipairs(status) do
            if s == 'OK' then applied = applied + 1 else bump(rejected, s, 1) end
          end
        end
      end
    until #messages < page or spent()
    -- what was read is deleted in the same call: applied (or dropped) exactly once
    for j = 1, #consumed, 1000 do
      redis.call('XDEL', inbox.key, unpack(consumed, j, math.min(j + 999, #consumed)))
    end
    local left = redis.call('XLEN', inbox.key)
    if left == 0 then
      redis.call('DEL', inbox.key)
    elseif left > cap then
      bump(dropped, 'trimmed', redis.call('XTRIM', inbox.key, 'MAXLEN', cap))
    end
  end
  local more = 0
  for _, inbox in ipairs(inboxes) do
    if redis.call('EXISTS', inbox.key) == 1 then more = 1 break end
  end
  announce(all_keys[1], arrived)
  return {read, applied, more, flat_counts(dropped), flat_counts(rejected)}
end

redis.register_function('recovery_metrics_add', add)
redis.register_function('recovery_metrics_drain', drain)
