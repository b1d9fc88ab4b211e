-- The load of benches/serve_load.sh in wrk: each connection posts one sentence at a time
-- (LibreTranslate API, the next line of the input file each time) and waits for the answer.
-- wrk is C and event-driven: on a 2-core machine it takes far less CPU from the server than
-- 32 Python client threads do. Prints the same four figures as the Python client:
--   RESULT sentences/s p50_ms p99_ms errors
-- Usage: wrk -t1 -c CLIENTS -d SECONDSs --timeout 120s -s benches/serve_client.lua URL INPUT
local bodies, next_body = {}, 0

local function json_string(s)
  return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"'):gsub('\t', '\\t'):gsub('\r', '\\r') .. '"'
end

function init(args)
  for line in io.lines(args[1]) do
    if line:match("%S") then
      bodies[#bodies + 1] = '{"q":' .. json_string(line) .. ',"source":"de","target":"en"}'
    end
  end
  assert(#bodies > 0, "no sentences in " .. tostring(args[1]))
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/translate", { ["Content-Type"] = "application/json" }, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  local failed = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format("RESULT %.1f %.0f %.0f %d\n",
    (summary.requests - e.status) / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, failed))
end
