-- Count one transaction on its terminal (once) and return the terminal's counts as of its event
-- time, shifted back by the label delay.
--
-- KEYS[1] tl  ZSET  tx_ids of the terminal's transactions; score = event time
-- KEYS[2] fr  ZSET  tx_ids of the terminal's fraud-labelled transactions; score = event time
-- KEYS[3] c   HASH  tx_id -> the reply it got the first time (while in the dedup window);
--                   '' -> "oldest,cache floor,ttl set at" (event times)
-- ARGV: tx_id, ts, watermark before this transaction, watermark after it
--
-- Replies "stamp,counts..,frauds..", one of each per window: the caller divides.
local tl, fr, c = KEYS[1], KEYS[2], KEYS[3]
local txid = ARGV[1]
local wprev, wafter = tonumber(ARGV[3]), tonumber(ARGV[4])
local match, fmt = string.match, string.format

local function chunked(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

local got = redis.call('HMGET', c, txid, '')
local cached, meta = got[1], got[2]
-- A cached reply means the transaction was counted: within the dedup window it stands.
if cached and not (tonumber(match(cached, '^[^,]*')) < wprev - DEDUP) then
  return cached
end
local oldest_s, floor_s, ttl_s
if meta then
  oldest_s, floor_s, ttl_s = match(meta, '^([^,]*),([^,]*),(.*)$')
else
  oldest_s, floor_s, ttl_s = 'inf', fmt('%.17g', wafter - DEDUP), '-inf'
end
local meta_was = meta

local t
if redis.call('ZADD', tl, 'NX', ARGV[2], txid) == 1 then
  t = tonumber(ARGV[2])
  if t < tonumber(oldest_s) then oldest_s = ARGV[2] end
else
  t = tonumber(redis.call('ZSCORE', tl, txid))
end

-- Nothing older than the watermark's retention horizon counts (trimmed or not yet).
local clip = wafter - RT
local upper = t - DELAY
local up = fmt('%.17g', upper)
local with_frauds = redis.call('EXISTS', fr) == 1
local out = {ARGV[4]}
local n_windows = #TW
for i = 1, n_windows do
  local x = upper - TW[i]
  local lo
  if clip > x then lo = fmt('%.17g', clip) else lo = '(' .. fmt('%.17g', x) end
  local count = redis.call('ZCOUNT', tl, lo, up)
  out[1 + i] = count
  out[1 + n_windows + i] = (count > 0 and with_frauds) and redis.call('ZCOUNT', fr, lo, up) or 0
end
local reply = table.concat(out, ',')

-- Upkeep, by the watermark: drop what no window reaches and the cached replies past the dedup
-- window, each with some slack so that it runs now and then rather than on every call.
local horizon = wafter - RT
if tonumber(oldest_s) < horizon - TRIM_SLACK then
  local bound = '(' .. fmt('%.17g', horizon)
  chunked('HDEL', c, redis.call('ZRANGEBYSCORE', tl, '-inf', bound))
  redis.call('ZREMRANGEBYSCORE', tl, '-inf', bound)
  redis.call('ZREMRANGEBYSCORE', fr, '-inf', bound)
  oldest_s = redis.call('ZRANGE', tl, 0, 0, 'WITHSCORES')[2] or 'inf'
end
local stale = wafter - DEDUP
if stale - tonumber(floor_s) > SWEEP_SLACK then
  local aged = redis.call('ZRANGEBYSCORE', tl, floor_s, '(' .. fmt('%.17g', stale))
  local dead = {}
  for i = 1, #aged, 1000 do
    local ids = {unpack(aged, i, math.min(i + 999, #aged))}
    local values = redis.call('HMGET', c, unpack(ids))
    for j = 1, #ids do
      local v = values[j]
      if v and tonumber(match(v, '^[^,]*')) < stale then dead[#dead + 1] = ids[j] end
    end
  end
  chunked('HDEL', c, dead)
  floor_s = fmt('%.17g', stale)
end
-- The TTL (wall clock) is a safety net for terminals that go quiet: set again whenever the
-- watermark has moved on by TTL_EVERY since, which in live traffic keeps it ahead of need.
if wafter - tonumber(ttl_s) > TTL_EVERY then
  redis.call('PEXPIRE', tl, TTL)
  redis.call('PEXPIRE', c, TTL)
  ttl_s = ARGV[4]
end
meta = oldest_s .. ',' .. floor_s .. ',' .. ttl_s
if meta ~= meta_was then
  redis.call('HSET', c, txid, reply, '', meta)
else
  redis.call('HSET', c, txid, reply)
end
return reply
