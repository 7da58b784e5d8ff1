-- wrk script for bench/endpoints.py: one endpoint, many users and tasks.
--   wrk -t THREADS ... -s bench/tasks.lua <url> -- MODE TARGETS_FILE THREADS
-- MODE: get, list, create, update, toggle or delete. TARGETS_FILE has one
-- "user_id task_id token" line per task; delete walks its lines in order (each task
-- once), the others pick at random.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
end

function init(args)
  mode = args[1]
  targets = {}
  for line in io.lines(args[2]) do
    local user, task, token = line:match("(%S+) (%S+) (%S+)")
    table.insert(targets, {user = user, task = task, token = token})
  end
  math.randomseed(os.time() + index * 7919)
  -- delete: every thread its own stride through the file, so no task is deleted twice
  cursor = index
  stride = tonumber(args[3])
end

local function pick()
  if mode == "delete" then
    local target = targets[cursor]
    cursor = cursor + stride
    return target or targets[1]
  end
  return targets[math.random(#targets)]
end

function request()
  local t = pick()
  local headers = {["Authorization"] = "Bearer " .. t.token}
  local base = "/api/" .. t.user .. "/tasks"
  if mode == "get" then
    return wrk.format("GET", base .. "/" .. t.task, headers)
  elseif mode == "list" then
    return wrk.format("GET", base .. "?limit=20", headers)
  elseif mode == "create" then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", base, headers, '{"title": "Benchmark task"}')
  elseif mode == "update" then
    headers["Content-Type"] = "application/json"
    local body = '{"title": "Renamed ' .. math.random(1000000) .. '"}'
    return wrk.format("PUT", base .. "/" .. t.task, headers, body)
  elseif mode == "toggle" then
    return wrk.format("PATCH", base .. "/" .. t.task .. "/complete", headers)
  elseif mode == "delete" then
    return wrk.format("DELETE", base .. "/" .. t.task, headers)
  end
end
