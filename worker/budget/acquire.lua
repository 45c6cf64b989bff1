-- Admit one API call against a model's shared budget, or say how long to wait.
-- A generic cell-rate algorithm (GCRA) per limit: each limit keeps a theoretical arrival
-- time (TAT); a call may start once every TAT is at most `tolerance` ahead of now, and then
-- pushes each TAT on by its cost. Calls therefore leave evenly spaced, never in a burst
-- beyond `tolerance`. A refusal writes nothing, so waiting costs no budget.
--
-- KEYS[1]  the model's budget hash
-- ARGV[1]  configured requests per minute; 0: the learned limit, if any
-- ARGV[2]  configured tokens per minute; 0: the learned limit, if any
-- ARGV[3]  the call's estimated tokens
-- ARGV[4]  headroom: the fraction of each limit left unused
-- ARGV[5]  tolerance in ms: how far ahead of its slot a call may start
-- ARGV[6]  the hash's lifetime in ms, renewed by each admission
-- ARGV[7]  now in ms, for tests; empty: Redis's own clock, the one every host shares
-- Returns {admitted 1|0, wait in ms as a string, 1 if the wait is a cluster pause else 0}.
local now
if ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local state = redis.call('HMGET', KEYS[1], 'req_tat', 'tok_tat', 'pause_until',
                         'learned_rpm', 'learned_tpm')
local req_tat = tonumber(state[1]) or 0
local tok_tat = tonumber(state[2]) or 0
local pause_until = tonumber(state[3]) or 0
local rpm = tonumber(ARGV[1])
if rpm <= 0 then rpm = tonumber(state[4]) or 0 end
local tpm = tonumber(ARGV[2])
if tpm <= 0 then tpm = tonumber(state[5]) or 0 end
local share = 1 - tonumber(ARGV[4])
local tolerance = tonumber(ARGV[5])

if pause_until > now then
  return {0, string.format('%.3f', pause_until - now), 1}
end
local wait = 0
if rpm > 0 then wait = math.max(wait, req_tat - now - tolerance) end
if tpm > 0 then wait = math.max(wait, tok_tat - now - tolerance) end
if wait > 0 then
  return {0, string.format('%.3f', wait), 0}
end
if rpm > 0 then
  req_tat = math.max(req_tat, now) + 60000 / (rpm * share)
  redis.call('HSET', KEYS[1], 'req_tat', string.format('%.17g', req_tat))
end
if tpm > 0 then
  tok_tat = math.max(tok_tat, now) + tonumber(ARGV[3]) * 60000 / (tpm * share)
  redis.call('HSET', KEYS[1], 'tok_tat', string.format('%.17g', tok_tat))
end
if rpm > 0 or tpm > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {1, '0', 0}
