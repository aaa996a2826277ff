-- wrk script of the bench: one authenticated (or Basic-auth) JSON request, repeated.
-- Environment: BENCH_METHOD (POST), BENCH_PATH (/), BENCH_AUTH (Authorization header
-- value), BENCH_BODY_FILE (request body, sent as application/json), BENCH_RANDOM_BEFORE
-- (N > 0: append &before=<random 2..N> to the path, for random inbox pages).
-- At the end it prints one line "BENCH_JSON {...}" that bench/loadgen.py parses.
local method = os.getenv("BENCH_METHOD") or "POST"
local path = os.getenv("BENCH_PATH") or "/"
local auth = os.getenv("BENCH_AUTH")
local body_file = os.getenv("BENCH_BODY_FILE")
local random_max = tonumber(os.getenv("BENCH_RANDOM_BEFORE") or "0")
local body = nil
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*a")
  f:close()
end
local headers = {}
if auth and auth ~= "" then headers["Authorization"] = auth end
if body then headers["Content-Type"] = "application/json" end

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

local fixed = nil
function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
  fixed = wrk.format(method, path, headers, body)
end

function request()
  if random_max > 0 then
    return wrk.format(method, path .. "&before=" .. math.random(2, random_max), headers, body)
  end
  return fixed
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"lat_us":{"p50":%d,"p90":%d,"p99":%d,' ..
    '"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
