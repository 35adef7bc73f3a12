local current = redis.call('GET', KEYS[1])
if current == false then current = 0 else current = tonumber(current) end
if current == nil or current ~= math.floor(current) then
  return redis.error_reply('ERR value is not an integer or out of range')
end
if current + tonumber(ARGV[1]) > tonumber(ARGV[3]) then
  return {0, current}
end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {1, value}
