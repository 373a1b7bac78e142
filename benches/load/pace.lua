-- Appended to pay.lua by run.sh for the fixed-rate latency run (wrk2-style pacing):
-- each thread keeps an absolute send schedule at rate/threads; delay() returns the time
-- to the next slot, 0 when late (then the thread sends as fast as its connections allow).
-- Latency is measured by wrk from the actual send, so a stall of all connections is not
-- corrected for coordinated omission (unlike wrk2/oha's correction).
function delay()
  if not interval then return 0 end
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  next_slot = next_slot + interval
  local d = next_slot - now
  if d < 1 then return 0 end
  return math.floor(d)
end
