-- Record what became known about one of the terminal's transactions.
-- KEYS: tl, fr of the terminal (see terminal_update.lua); ARGV: tx_id, '1' fraud or '0' legitimate.
-- Returns 1 if the terminal still holds the transaction, else 0.
local tl, fr = KEYS[1], KEYS[2]
local ts = redis.call('ZSCORE', tl, ARGV[1])
if not ts then return 0 end
if ARGV[2] == '1' then
  redis.call('ZADD', fr, ts, ARGV[1])
  redis.call('PEXPIRE', fr, TTL)
else
  redis.call('ZREM', fr, ARGV[1])
end
return 1
