local current = redis.call('GET', KEYS[1])
local matches
if ARGV[1] == '0' then matches = (current == false) else matches = (current == ARGV[2]) end
if not matches then
  if current == false then return {0} end
  return {0, current}
end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
end
return {1}
