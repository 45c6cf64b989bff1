-- The consumer's fetch (worker/celery_ext/transport.py): pop up to ARGV[2] messages of the
-- first non-empty list and write the unacked copy of each in the same atomic step.
--
-- KEYS: the candidate lists in the order to try, then the unacked hash and its index.
-- ARGV[1]: now, in seconds; ARGV[2]: how many messages to take at most; ARGV[2 + i]: "1" if
-- KEYS[i] is consumed with acks (a no-ack consumer, such as a control reply queue, never
-- acks, so it gets no unacked copy).
-- Returns {key, message, tag, message, tag, ...}, where tag is the delivery tag whose
-- unacked copy it wrote, or ""; false when every list is empty.
-- RPOP is each message's first write: a Redis out of memory refuses the script there, before
-- anything is taken, and once a message is popped its unacked copy always follows.
-- The unacked entry is kombu 5.7's own format: [message, exchange, routing_key].
local lists = #KEYS - 2
local unacked, index = KEYS[lists + 1], KEYS[lists + 2]
local limit = tonumber(ARGV[2])
for i = 1, lists do
    if redis.call('LLEN', KEYS[i]) > 0 then
        local found = {KEYS[i]}
        for _ = 1, limit do
            local item = redis.call('RPOP', KEYS[i])
            if not item then break end
            local ok, message = pcall(cjson.decode, item)
            local props = ok and type(message) == 'table' and message['properties']
            local tag = type(props) == 'table' and props['delivery_tag']
            if ARGV[i + 2] == '1' and type(tag) == 'string' then
                local info = props['delivery_info']
                if type(info) ~= 'table' then info = {} end
                redis.call('ZADD', index, ARGV[1], tag)
                redis.call('HSET', unacked, tag, '[' .. item .. ','
                    .. cjson.encode(info['exchange'] or '') .. ','
                    .. cjson.encode(info['routing_key'] or '') .. ']')
            else
                tag = ''
            end
            found[#found + 1] = item
            found[#found + 1] = tag
        end
        return found
    end
end
return false
