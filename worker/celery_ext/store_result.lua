-- One result write of the result backend (worker/celery_ext/result_backend.py): check that no
-- final state (SUCCESS, REVOKED) is stored yet, write, publish, in one atomic step and one
-- round trip.
--
-- KEYS[1]: the result key. ARGV[1]: the encoded meta (JSON); ARGV[2]: its lifetime in
-- seconds (0: none). Returns 0 and writes nothing when the stored meta already says SUCCESS
-- or REVOKED, else 1. Adapted from celery 5.7.0 celery/backends/redis.py RedisBackend._set (SETEX or SET,
-- then PUBLISH) and celery/backends/base.py KeyValueStoreBackend._store_result (the check).
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and (meta['status'] == 'SUCCESS' or meta['status'] == 'REVOKED') then
        return 0
    end
end
local lifetime = tonumber(ARGV[2])
if lifetime > 0 then
    redis.call('SETEX', KEYS[1], lifetime, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
