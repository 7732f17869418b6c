-- wrk script for the `http-paced` scenario: each connection waits a random, exponentially
-- distributed think time after every response, so the connections together offer about
-- RATE requests per second (a Poisson-like arrival stream, not wrk's back-to-back requests).
-- Arguments (after `--`): RATE CONNS.
local mean_ms

function init(args)
    local rate, conns = tonumber(args[1]), tonumber(args[2])
    if not rate or not conns or rate <= 0 or conns <= 0 then
        error("paced.lua: usage: wrk ... -s paced.lua URL -- RATE CONNS")
    end
    mean_ms = conns * 1000 / rate
    math.randomseed(os.time())
end

-- wrk rounds the delay down to whole milliseconds: draw in microseconds and round at random
-- instead, so the mean stays conns/rate.
function delay()
    local ms = -math.log(1 - math.random()) * mean_ms
    local whole = math.floor(ms)
    if math.random() < ms - whole then whole = whole + 1 end
    return whole
end
