-- wrk script: POST /v1/claims with a unique identity and request ID per request.
-- Usage (see BENCHMARKS.md):
--   TRANCHE=bench LNG=111.295 LAT=30.702 wrk -t2 -c128 -d10s -s benches/wrk/claim.lua http://127.0.0.1:8080
-- The same script drives the hello_server peer, so both receive identical bytes.

local tranche = os.getenv("TRANCHE") or "bench"
local lng = os.getenv("LNG") or "111.295"
local lat = os.getenv("LAT") or "30.702"
local counter = 0
local thread_tag = ""
-- Distinct per run (seconds since the epoch) and per thread.
local run_tag = tostring(os.time())
local threads_started = 0

function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_tag", run_tag .. "t" .. threads_started)
end

function request()
  counter = counter + 1
  local id = thread_tag .. "-" .. counter
  local body = '{"tranche_id":"' .. tranche .. '","user_id":"wrk-' .. id ..
    '","location":{"lng":' .. lng .. ',"lat":' .. lat .. '},"request_id":"r-' .. id .. '"}'
  return wrk.format("POST", "/v1/claims", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  io.write(string.format("requests/s %.0f  p50 %.2fms  p99 %.2fms\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
