-- post.lua: wrk script for scripts/bench: a urlencoded valuation-form post, as the sample
-- widget sends it, with a body unique to each request: the bridge's outbox answers a repeated
-- submission from its spool (a duplicate), so a benchmark of the durable path must vary it.
-- setup() numbers wrk's threads; each thread counts its own requests, so no two threads (and
-- no two runs: BENCH_TAG) ever send the same body.
local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("thread_no", threads)
end

local counter = 0
local tag = os.getenv("BENCH_TAG") or tostring(os.time())
local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Accept"] = "application/json",
    ["Origin"] = "http://127.0.0.1",
}

function request()
    counter = counter + 1
    local id = tag .. "-" .. tostring(thread_no) .. "-" .. tostring(counter)
    local body = "name=Ada+Lovelace&email=ada." .. id .. "%40example.com" ..
                 "&phone=07986000000&address=1+Elm+Street%2C+Derby+DE1+1JX" ..
                 "&bedrooms=" .. tostring(counter % 6) .. "&property_type=Detached&purpose=sell" ..
                 "&consent=yes&utm_source=newsletter&utm_medium=email&utm_campaign=spring" ..
                 "&utm_content=" .. id
    return wrk.format("POST", nil, headers, body)
end
