-- The write mix for wrk (bench/run.py): each thread has one connection and its own customer and
-- performer (API tokens in BENCH_WRITE_TOKENS, "customer,performer;customer,performer;…", one
-- pair per thread), and walks one order at a time through create, take, deliver and accept with a
-- rating: four writes over the API. A refused write starts a new order. wrk is C: the load
-- costs the two cores a fraction of what a Python client did.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("n", threads)
end

function init(args)
  local i = 0
  for customer_token, performer_token in string.gmatch(os.getenv("BENCH_WRITE_TOKENS") or "", "([^,;]+),([^,;]+)") do
    i = i + 1
    if i == n then
      customer, performer = customer_token, performer_token
    end
  end
  assert(customer, "BENCH_WRITE_TOKENS has no pair for thread " .. n)
  step, order, done = "create", nil, 0
end

local function post(token, path, body)
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. token,
                                   ["Content-Type"] = "application/json"}, body)
end

function request()
  if step == "create" then
    return post(customer, "/api/v1/orders", string.format(
      '{"title": "Bench write %d заказ", "description": "Запись из бенча / a bench write", ' ..
      '"category": "design", "budget": %d}', n, 1000 + n))
  elseif step == "take" then
    return post(performer, "/api/v1/orders/" .. order .. "/take", "{}")
  elseif step == "deliver" then
    return post(performer, "/api/v1/orders/" .. order .. "/deliver", '{"message": "Готово / done"}')
  end
  return post(customer, "/api/v1/orders/" .. order .. "/accept",
              string.format('{"rating": %d, "review": ""}', 1 + done % 10))
end

local next_step = {create = "take", take = "deliver", deliver = "accept", accept = "create"}

function response(status, headers, body)
  if status < 200 or status > 299 then
    step = "create"
    return
  end
  if step == "create" then
    order = string.match(body, '^{"id": (%d+)')
  elseif step == "accept" then
    done = done + 1
  end
  step = next_step[step]
end
