-- After a call: settle its tokens, remember the limits the API reported, and maybe pause.
--
-- KEYS[1]  the model's budget hash
-- ARGV[1]  token correction: actual minus estimated tokens (negative gives budget back)
-- ARGV[2]  configured tokens per minute; 0: the learned limit, if any
-- ARGV[3]  headroom: the fraction of each limit left unused
-- ARGV[4]  requests per minute the API reported; 0: none reported
-- ARGV[5]  tokens per minute the API reported; 0: none reported
-- ARGV[6]  pause every worker for this many ms; 0: no pause
-- ARGV[7]  the hash's lifetime in ms
-- ARGV[8]  now in ms, for tests; empty: Redis's own clock
-- Returns 1 when this report started a pause (none was running), else 0.
local now
if ARGV[8] ~= '' then
  now = tonumber(ARGV[8])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local state = redis.call('HMGET', KEYS[1], 'tok_tat', 'pause_until', 'learned_tpm')
local tok_tat = tonumber(state[1])
local pause_until = tonumber(state[2]) or 0
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[1], 'learned_rpm', ARGV[4]) end
local tpm = tonumber(ARGV[2])
if tpm <= 0 then
  if tonumber(ARGV[5]) > 0 then
    redis.call('HSET', KEYS[1], 'learned_tpm', ARGV[5])
    tpm = tonumber(ARGV[5])
  else
    tpm = tonumber(state[3]) or 0
  end
end
local correction = tonumber(ARGV[1])
if correction ~= 0 and tpm > 0 and tok_tat then
  -- Never below now: a refund restores a slot, it does not bank a burst.
  tok_tat = math.max(now, tok_tat + correction * 60000 / (tpm * (1 - tonumber(ARGV[3]))))
  redis.call('HSET', KEYS[1], 'tok_tat', string.format('%.17g', tok_tat))
end
local started = 0
local pause = tonumber(ARGV[6])
if pause > 0 and now + pause > pause_until then
  if pause_until <= now then started = 1 end
  redis.call('HSET', KEYS[1], 'pause_until', string.format('%.17g', now + pause))
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return started
