-- post.lua: wrk script for scripts/bench: every request is a urlencoded form post, as a contact
-- form with UTMs sends it (the same body for leadbridge's echo form and the bare responder).
wrk.method = "POST"
wrk.body = "name=Marla+Singer&email=marla%40example.com&phone=07986000000&enquiry=Selling" ..
           "&postcode=DE1+1JX"  ..
           "&message=Is+the+flat+on+Elm+Street+still+available%3F" ..
           "&utm_source=newsletter&utm_medium=email&utm_campaign=spring&gclid=TEST123"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
wrk.headers["Origin"] = "http://127.0.0.1"
