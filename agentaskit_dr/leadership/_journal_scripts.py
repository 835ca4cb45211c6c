"""The run journal's Lua scripts: every write is one script that first checks the fence.

Each script starts with ``FENCE`` (the writer's lease still holds the lock: the leader key
is its token and the info hash carries its epoch), so the check and the write are atomic
on the server. Refusals come back as error replies whose first word is a code
(``STALE_EPOCH``, ``ACTIVE_RUN``, ``NO_RUN``, ``RUN_FINISHED``) that ``journal.py`` maps.
"""

# Prepended to every write. KEYS[1] leader, KEYS[2] info; ARGV[1] token, ARGV[2] epoch.
FENCE = """
local held_by = redis.call('GET', KEYS[1])
local info = redis.call('HMGET', KEYS[2], 'holder', 'epoch')
if held_by ~= ARGV[1] or info[2] ~= ARGV[2] then
  if not held_by then
    return redis.error_reply('STALE_EPOCH the lock is free')
  end
  return redis.error_reply('STALE_EPOCH the lock is held by ' .. tostring(info[1])
    .. ' under epoch ' .. tostring(info[2]))
end
"""

# Refuses a writer older than one that already wrote the run (KEYS[3] run, ARGV[2] epoch).
NOT_OLDER = """
local last_epoch = tonumber(redis.call('HGET', KEYS[3], 'last_epoch'))
if last_epoch and last_epoch > tonumber(ARGV[2]) then
  return redis.error_reply('STALE_EPOCH the run was already written under epoch ' .. last_epoch)
end
"""

# KEYS: leader, info, run, runs, active. ARGV: token, epoch, run_id, header, created_at.
OPEN = FENCE + """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local active = redis.call('GET', KEYS[5])
if active and active ~= ARGV[3] then
  return redis.error_reply('ACTIVE_RUN ' .. active)
end
redis.call('HSET', KEYS[3], 'header', ARGV[4], 'last_epoch', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
redis.call('SET', KEYS[5], ARGV[3])
return 1
"""

# KEYS: leader, info, run, entries. ARGV: token, epoch, entry.
RECORD = FENCE + """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NO_RUN')
end
local finished = redis.call('HGET', KEYS[3], 'finished')
if finished then
  return redis.error_reply('RUN_FINISHED ' .. finished)
end
""" + NOT_OLDER + """
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[3], 'last_epoch', ARGV[2])
return 1
"""

# KEYS: leader, info, run, active. ARGV: token, epoch, run_id, outcome.
FINISH = FENCE + """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NO_RUN')
end
local finished = redis.call('HGET', KEYS[3], 'finished')
if finished and finished ~= ARGV[4] then
  return redis.error_reply('RUN_FINISHED ' .. finished)
end
""" + NOT_OLDER + """
if not finished then
  redis.call('HSET', KEYS[3], 'finished', ARGV[4], 'last_epoch', ARGV[2])
end
if redis.call('GET', KEYS[4]) == ARGV[3] then
  redis.call('DEL', KEYS[4])
end
return 1
"""
