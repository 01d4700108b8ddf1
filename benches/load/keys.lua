-- wrk script: one request per key from a keys file, rotated per request in the x-api-key header,
-- and a machine-readable summary line at the end.
--
--   wrk -t1 -c64 -d10s --latency -s keys.lua http://127.0.0.1:PORT -- KEYS_FILE [PATH [BODY]]
--
-- Every contender gets the same requests (nginx and the bare upstream ignore the header), so the
-- client's own work is the same for all of them. The requests are rendered once in init(): the
-- per-request cost in wrk is an index increment.

local requests = {}
local n = 0
local i = 0

function init(args)
  local file = args[1] or error("usage: -- KEYS_FILE [PATH [BODY]]")
  local path = args[2] or "/whoisserver/WhoisService?domainName=example.com&outputFormat=JSON"
  -- With a BODY: POST it as JSON (Content-Length framed), the key in the header, or in the body
  -- where it says @KEY@ (the vendor's POST convention, Tollgate's json:apiKey source).
  local body = args[3]
  for key in io.lines(file) do
    if key ~= "" then
      n = n + 1
      if body and body:find("@KEY@", 1, true) then
        requests[n] = wrk.format("POST", path, { ["content-type"] = "application/json" },
          (body:gsub("@KEY@", key)))
      elseif body then
        requests[n] = wrk.format("POST", path,
          { ["x-api-key"] = key, ["content-type"] = "application/json" }, body)
      else
        requests[n] = wrk.format("GET", path, { ["x-api-key"] = key })
      end
    end
  end
  if n == 0 then
    error("no keys in " .. file)
  end
  -- Threads start at different offsets so they do not march over the keys in lockstep.
  i = math.random(0, n - 1)
end

function request()
  i = i % n + 1
  return requests[i]
end

-- One line, parsed by run.sh: requests, duration (us), latency percentiles and mean (us), errors.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'TGJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"max_us": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, ' ..
    '"errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
