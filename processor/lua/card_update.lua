-- Count one transaction on its card (once) and return what the card's features are made of.
--
-- KEYS[1] tl  ZSET  the card's transactions; score = event time; member = 12 hex digits of the
--                   card's arrival sequence (ties sort in arrival order, as in the reference),
--                   '<n>:' and the terminal (n bytes), the card's running amount sum before the
--                   transaction ('cb', as the reference's prefix sums), '|', amount, '|', tx_id
-- KEYS[2] fr  ZSET  tx_ids of the card's fraud-labelled transactions; score = event time
-- KEYS[3] h   HASH  tx_id -> the reply it got the first time (while in the dedup window), '\n',
--                   its member; '' -> "seq,oldest,newest,cache floor,ttl set at" (event times)
-- ARGV: tx_id, ts, amount, terminal, watermark before this transaction, watermark after it
--
-- Replies "stamp,amount,ts,is_weekend,is_night,counts..,cb at each window's start..,cb and
-- amount of the window's last transaction,time of the one before this,distinct terminals,
-- known frauds": the caller does the arithmetic, as the reference does, from exact inputs. The
-- reply formats integers only; every other number in it is text that Redis or the caller wrote.
local tl, fr, h = KEYS[1], KEYS[2], KEYS[3]
local txid = ARGV[1]
local wprev, wafter = tonumber(ARGV[5]), tonumber(ARGV[6])
local find, sub, match, fmt = string.find, string.sub, string.match, string.format

local got = redis.call('HMGET', h, txid, '')
local stored, meta = got[1], got[2]
local m
if stored then
  local nl = find(stored, '\n', 1, true)
  m = sub(stored, nl + 1)
  -- Counted already: within the dedup window the first answer stands (the reference's cache).
  if nl > 1 and not (tonumber(match(stored, '^[^,]*')) < wprev - DEDUP) then
    return sub(stored, 1, nl - 1)
  end
end

local seq, oldest_s, newest_s, floor_s, ttl_s
if meta then
  seq, oldest_s, newest_s, floor_s, ttl_s = match(meta, '^([^,]*),([^,]*),([^,]*),([^,]*),(.*)$')
else
  seq, oldest_s, newest_s, floor_s, ttl_s = 0, 'inf', '-inf', fmt('%.17g', wafter - DEDUP), '-inf'
end

-- A member's terminal; its cb and amount (as text) and tx_id.
local function terminal_of(mm)
  local n, p = match(mm, '^(%d+):()', 13)
  return sub(mm, p, p + n - 1)
end
local function fields(mm)
  local n, p = match(mm, '^(%d+):()', 13)
  local cb, amount, p2 = match(mm, '^([^|]*)|([^|]*)|()', p + n)
  return cb, amount, sub(mm, p2)
end
local function chunked(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- Nothing older than the watermark's retention horizon counts (trimmed or not yet).
local clip = wafter - RC
local function lower(x)
  if clip > x then return fmt('%.17g', clip) end
  return '(' .. fmt('%.17g', x)
end

local t, ts_s, recent, prev_s
local newest = tonumber(newest_s)
if m then
  ts_s = redis.call('ZSCORE', tl, m)
  t = tonumber(ts_s)
  recent = redis.call('ZRANGEBYSCORE', tl, lower(t - DW), ts_s, 'WITHSCORES')
  for i = 1, #recent, 2 do
    if recent[i] == m then
      if i > 1 then
        prev_s = recent[i - 1]
      else
        local rank = redis.call('ZRANK', tl, m)
        if rank > 0 then prev_s = redis.call('ZRANGE', tl, rank - 1, rank - 1, 'WITHSCORES')[2] end
      end
    end
  end
else
  ts_s = ARGV[2]
  t = tonumber(ts_s)
  seq = seq + 1
  local term, amount_s = ARGV[4], ARGV[3]
  recent = redis.call('ZRANGEBYSCORE', tl, lower(t - DW), ts_s, 'WITHSCORES')
  local prev = recent[#recent - 1]
  if prev then
    prev_s = recent[#recent]
  else
    local p = redis.call('ZREVRANGEBYSCORE', tl, ts_s, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    prev, prev_s = p[1], p[2]
  end
  local later = {}
  if t < newest then
    later = redis.call('ZRANGEBYSCORE', tl, '(' .. ts_s, '+inf', 'WITHSCORES')
  end
  local cb = 0
  if prev then
    local pcb, pamount = fields(prev)
    cb = pcb + pamount
  elseif later[1] then
    cb = tonumber((fields(later[1])))
  end
  m = fmt('%012x', seq) .. #term .. ':' .. term .. fmt('%.17g', cb) .. '|' .. amount_s .. '|' .. txid
  redis.call('ZADD', tl, ts_s, m)
  if t >= clip then
    recent[#recent + 1] = m
    recent[#recent + 1] = ts_s
  end
  -- A late arrival: the running sums after it move by its amount, added in the same order as
  -- the reference rebuilds them.
  if later[1] then
    local run = cb + amount_s
    for i = 1, #later, 2 do
      local old = later[i]
      local ocb, oamount, otx = fields(old)
      if tonumber(ocb) ~= run then
        local n, p = match(old, '^(%d+):()', 13)
        local new = sub(old, 1, p + n - 1) .. fmt('%.17g', run) .. sub(old, p + n + #ocb)
        redis.call('ZREM', tl, old)
        redis.call('ZADD', tl, later[i + 1], new)
        local v = redis.call('HGET', h, otx)  -- its cached reply stays, its member changes
        redis.call('HSET', h, otx, sub(v, 1, find(v, '\n', 1, true)) .. new)
      end
      run = run + oamount
    end
  end
  if t < tonumber(oldest_s) then oldest_s = ts_s end
  if t > newest then newest_s = ts_s end
end

-- The reply. Windows up to DW come from the scan above, longer ones from the sorted set.
local out = {
  ARGV[6], ARGV[3], ts_s,
  (math.floor(math.floor(t) / 86400) + 3) % 7 >= 5 and '1' or '0',
  math.floor((math.floor(t) % 86400) / 3600) <= NIGHT and '1' or '0',
}
local n_windows = #CW
local longest_lo
local last = recent[#recent - 1] or m
for i = 1, n_windows do
  local w = CW[i]
  local count, first = 0, nil
  if w == DW then
    count, first = #recent / 2, recent[1]
  elseif w < DW then
    local edge = t - w
    for j = #recent, 2, -2 do
      if tonumber(recent[j]) <= edge then break end
      count = count + 1
      first = recent[j - 1]
    end
  else
    local lo = lower(t - w)
    if w == LONGEST then longest_lo = lo end
    count = redis.call('ZCOUNT', tl, lo, ts_s)
    if count > 0 then first = redis.call('ZRANGEBYSCORE', tl, lo, ts_s, 'LIMIT', 0, 1)[1] end
  end
  out[5 + i] = count
  out[5 + n_windows + i] = first and (fields(first)) or ''
end
local lcb, lamount = fields(last)
local prev_ts = ''
if prev_s then
  local p = tonumber(prev_s)
  if p > t - LONGEST and p >= clip then prev_ts = prev_s end
end
local seen, distinct = {}, 0
for i = 1, #recent, 2 do
  local k = terminal_of(recent[i])
  if not seen[k] then
    seen[k] = true
    distinct = distinct + 1
  end
end
local base = 5 + 2 * n_windows
out[base + 1] = lcb
out[base + 2] = lamount
out[base + 3] = prev_ts
out[base + 4] = distinct
out[base + 5] = redis.call('ZCOUNT', fr, longest_lo or lower(t - LONGEST), ts_s)
local reply = table.concat(out, ',')

-- Upkeep, by the watermark: drop what no window reaches and the cached replies past the dedup
-- window, each with some slack so that it runs now and then rather than on every call.
local horizon = wafter - RC
if tonumber(oldest_s) < horizon - TRIM_SLACK then
  local bound = '(' .. fmt('%.17g', horizon)
  local gone = redis.call('ZRANGEBYSCORE', tl, '-inf', bound)
  local ids = {}
  for i = 1, #gone do
    local _, _, id = fields(gone[i])
    ids[i] = id
  end
  chunked('HDEL', h, ids)
  redis.call('ZREMRANGEBYSCORE', tl, '-inf', bound)
  redis.call('ZREMRANGEBYSCORE', fr, '-inf', bound)
  oldest_s = redis.call('ZRANGE', tl, 0, 0, 'WITHSCORES')[2] or 'inf'
end
local stale = wafter - DEDUP
if stale - tonumber(floor_s) > SWEEP_SLACK then
  local aged = redis.call('ZRANGEBYSCORE', tl, floor_s, '(' .. fmt('%.17g', stale))
  for i = 1, #aged, 500 do
    local ids = {}
    for j = i, math.min(i + 499, #aged) do
      local _, _, id = fields(aged[j])
      ids[#ids + 1] = id
    end
    local values = redis.call('HMGET', h, unpack(ids))
    local bare = {}
    for j = 1, #ids do
      local v = values[j]
      if v and sub(v, 1, 1) ~= '\n' and tonumber(match(v, '^[^,]*')) < stale then
        bare[#bare + 1] = ids[j]
        bare[#bare + 1] = sub(v, (find(v, '\n', 1, true)))
      end
    end
    if bare[1] then redis.call('HSET', h, unpack(bare)) end
  end
  floor_s = fmt('%.17g', stale)
end
-- The TTL (wall clock) is a safety net for cards that go quiet: set again whenever the
-- watermark has moved on by TTL_EVERY since, which in live traffic keeps it ahead of need.
if wafter - tonumber(ttl_s) > TTL_EVERY then
  redis.call('PEXPIRE', tl, TTL)
  redis.call('PEXPIRE', h, TTL)
  ttl_s = ARGV[6]
end
meta = table.concat({seq, oldest_s, newest_s, floor_s, ttl_s}, ',')
redis.call('HSET', h, txid, reply .. '\n' .. m, '', meta)
return reply
