-- wrk script for benches/load/run.sh (written for paygate; not copied from anywhere).
-- Sends POST <path> with a fixed 400-byte JSON body and the merchant's headers, and a
-- unique Idempotency-Key on every request (run tag, thread id, counter).
-- Fixed-rate mode: run.sh appends pace.lua (wrk enables per-request delays only when the
-- script defines delay(), so the closed-loop run must not define it).
-- args: path rate(0 = closed loop) threads bodyfile tag apikey
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } pgl_timespec;
int clock_gettime(int clk_id, pgl_timespec *tp);
]]
local ts = ffi.new("pgl_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

local path, interval, body, tag, headers
local counter = 0
local next_slot = nil

function init(args)
  path = args[1]
  local rate = tonumber(args[2]) or 0
  local threads = tonumber(args[3]) or 1
  local f = assert(io.open(args[4], "rb"))
  body = f:read("*a")
  f:close()
  tag = args[5]
  if rate > 0 then interval = threads * 1000.0 / rate end
  headers = {
    ["Host"] = "127.0.0.1",
    ["Authorization"] = "Bearer " .. args[6],
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
    ["User-Agent"] = "merchant-load/1.0",
  }
end

function request()
  counter = counter + 1
  headers["Idempotency-Key"] = tag .. "-" .. tid .. "-" .. counter
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
