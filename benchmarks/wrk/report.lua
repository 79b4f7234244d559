-- wrk script of the benchmark harness.
--
-- WRK_BODY_FILE (optional): send every request as POST with this file as a
-- JSON body. done() prints one line "WRKJSON {...}" with the counters and
-- latency percentiles (microseconds) that run.py parses.

local body_file = os.getenv("WRK_BODY_FILE")
if body_file and body_file ~= "" then
  local handle = assert(io.open(body_file, "rb"))
  wrk.body = handle:read("*a")
  handle:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q)
    if summary.requests > 0 then
      return latency:percentile(q)
    end
    return 0
  end
  io.write(string.format(
    'WRKJSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    p(50), p(90), p(99), latency.max, latency.mean))
end
