-- Admit one API call against a model's shared budget, or say how long to wait.
-- A generic cell-rate algorithm (GCRA) per limit: each limit keeps a theoretical arrival
-- time (TAT); a call may start once every TAT is at most `tolerance` ahead of now, and then
-- pushes each TAT on by its cost. Calls therefore leave evenly spaced, never in a burst
-- beyond `tolerance`. A refusal writes nothing, so waiting costs no budget.
--
-- Lanes (docs/lanes.md): an interactive call that must wait records itself in the model's
-- demand set until it is admitted (or its entry expires: a worker that died). While anyone's
-- interactive call waits, bulk calls are refused; but once `floor_every` calls of interactive
-- texts only went in a row while a bulk call waited, the next slot is bulk's, so bulk keeps a
-- floor share of the budget when both lanes are saturated.
--
-- KEYS[1]  the model's budget hash
-- KEYS[2]  the model's demand set: interactive callers waiting, scored by expiry in ms
-- ARGV[1]  configured requests per minute; 0: the learned limit, if any
-- ARGV[2]  configured tokens per minute; 0: the learned limit, if any
-- ARGV[3]  the call's estimated tokens
-- ARGV[4]  headroom: the fraction of each limit left unused
-- ARGV[5]  tolerance in ms: how far ahead of its slot a call may start
-- ARGV[6]  the hash's lifetime in ms, renewed by each admission
-- ARGV[7]  now in ms, for tests; empty: Redis's own clock, the one every host shares
-- ARGV[8]  the call's lane: 'interactive' or 'bulk'
-- ARGV[9]  the caller's id in the demand set (one per worker process)
-- ARGV[10] floor_every: interactive admissions in a row after which a waiting bulk call goes
--          first (0: the lanes share the budget first come, first served)
-- ARGV[11] how long a demand entry outlives the wait it was told, in ms
-- ARGV[12] the shortest wait a yielding bulk call is told, in ms
-- ARGV[13] '1' when an interactive call also carries bulk texts: bulk is served by it
-- Returns {admitted 1|0, wait in ms as a string, 1 if the wait is a cluster pause else 0}.
local now
if ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local state = redis.call('HMGET', KEYS[1], 'req_tat', 'tok_tat', 'pause_until',
                         'learned_rpm', 'learned_tpm', 'since_bulk', 'bulk_waits_until')
local req_tat = tonumber(state[1]) or 0
local tok_tat = tonumber(state[2]) or 0
local pause_until = tonumber(state[3]) or 0
local rpm = tonumber(ARGV[1])
if rpm <= 0 then rpm = tonumber(state[4]) or 0 end
local tpm = tonumber(ARGV[2])
if tpm <= 0 then tpm = tonumber(state[5]) or 0 end
local share = 1 - tonumber(ARGV[4])
local tolerance = tonumber(ARGV[5])

local interactive = ARGV[8] == 'interactive'
local floor_every = tonumber(ARGV[10])
local margin = tonumber(ARGV[11])
local since_bulk = tonumber(state[6]) or 0
local bulk_waits = (tonumber(state[7]) or 0) > now
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

-- An interactive caller told to wait stays in the demand set until then, plus a margin.
local function refuse_interactive(wait_ms, paused)
  redis.call('ZADD', KEYS[2], now + wait_ms + margin, ARGV[9])
  redis.call('PEXPIRE', KEYS[2], math.ceil(wait_ms + margin))
  return {0, string.format('%.3f', wait_ms), paused}
end

-- A bulk caller told to wait is remembered as waiting (under a limit only: see below).
local function refuse_bulk(wait_ms)
  if rpm > 0 or tpm > 0 then
    redis.call('HSET', KEYS[1], 'bulk_waits_until', string.format('%.17g', now + wait_ms + margin))
  end
  return {0, string.format('%.3f', wait_ms), 0}
end

if pause_until > now then
  if interactive then return refuse_interactive(pause_until - now, 1) end
  return {0, string.format('%.3f', pause_until - now), 1}
end
local wait = 0
if rpm > 0 then wait = math.max(wait, req_tat - now - tolerance) end
if tpm > 0 then wait = math.max(wait, tok_tat - now - tolerance) end
local floor_due = since_bulk >= floor_every
if interactive and floor_every > 0 and floor_due and bulk_waits then
  -- Bulk's turn: interactive calls went floor_every times in a row while it waited.
  return refuse_interactive(math.max(wait, tonumber(ARGV[12])), 0)
end
if not interactive and not floor_due and redis.call('ZCARD', KEYS[2]) > 0 then
  return refuse_bulk(math.max(wait, tonumber(ARGV[12])))
end
if wait > 0 then
  if interactive then return refuse_interactive(wait, 0) end
  return refuse_bulk(wait)
end
if interactive then
  redis.call('ZREM', KEYS[2], ARGV[9])
end
if rpm > 0 or tpm > 0 then
  -- Counted only under a limit: without one no call waits, and nothing is written.
  if interactive and ARGV[13] ~= '1' then
    redis.call('HSET', KEYS[1], 'since_bulk', math.min(since_bulk + 1, floor_every))
  else
    redis.call('HSET', KEYS[1], 'since_bulk', 0, 'bulk_waits_until', 0)
  end
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
