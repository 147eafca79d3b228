-- Record what became known about one of the card's transactions.
-- KEYS: tl, fr, h of the card (see card_update.lua); ARGV: tx_id, '1' fraud or '0' legitimate.
-- Replies 1 if the card still holds the transaction, else 0.
local tl, fr, h = KEYS[1], KEYS[2], KEYS[3]
local stored = redis.call('HGET', h, ARGV[1])
if not stored then return 0 end
local ts = redis.call('ZSCORE', tl, string.sub(stored, string.find(stored, '\n', 1, true) + 1))
if not ts then return 0 end
if ARGV[2] == '1' then
  redis.call('ZADD', fr, ts, ARGV[1])
  redis.call('PEXPIRE', fr, TTL)
else
  redis.call('ZREM', fr, ARGV[1])
end
return 1
