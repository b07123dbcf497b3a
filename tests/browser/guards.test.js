"use strict";
/*
 * guards.test.js: issue 11's human run. The spam guards on and required (stack.py --profile
 * guards: honeypot, signed form token with its 3 s time trap and "missing": "spam", the ALTCHA
 * proof of work on the valuation form), a person fills the sample site at human speed in
 * headless Chromium, and the lead arrives at the stand-in: 0 false positives. A bot's post on
 * the same stack lands in quarantine, so the guards are really on.
 */
const { describe, it } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const L = require("./lib");

let stack, browser;

L.useStack("guards", (s, b) => { stack = s; browser = b; });

/* Quarantined jobs (the spool's spam/ folder) that carry marker. */
function quarantined(marker) {
  const d = path.join(stack.dir, "spool", "spam");
  if (!fs.existsSync(d)) return [];
  return fs.readdirSync(d).filter((n) => n.endsWith(".json"))
    .map((n) => fs.readFileSync(path.join(d, n), "utf8")).filter((t) => t.includes(marker));
}

/* The bodies of the page's POSTs, as the browser sent them. */
function recordPosts(page) {
  const posts = [];
  page.on("request", (r) => { if (r.method() === "POST") posts.push({ url: r.url(), body: new URLSearchParams(r.postData() || "") }); });
  return posts;
}

describe("the human run with the spam guards on", () => {
  it("with JavaScript: token, honeypot and proof of work pass at human speed; step 2 right after the result too", async () => {
    const page = await L.newPage(browser, { width: 375 });
    const posts = recordPosts(page);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
    const t0 = Date.now();
    await L.fill(page, "lb-valuation", { purpose: "sell" });
    await L.fill(page, "lb-valuation", v, 45);           // about 45 ms a key, as a person types
    await L.fill(page, "lb-valuation", { property_type: "Terraced", consent: true });
    assert.ok(Date.now() - t0 > 3000, "typed at human speed (" + (Date.now() - t0) + " ms)");
    await page.click("button[type=submit]");
    await page.waitForSelector(".lb-result .lb-numbers", { timeout: 30000 });
    const p1 = posts.find((p) => p.url.endsWith("/lead/valuation"));
    assert.match(p1.body.get("lb_token") || "", /^\d+\.[0-9a-f]+\./, "the widget posted the form token");
    assert.ok(p1.body.get("altcha"), "the widget posted the solved challenge");
    const sol = JSON.parse(Buffer.from(p1.body.get("altcha"), "base64").toString());
    assert.equal(typeof sol.number, "number");
    assert.equal(p1.body.get("lb_website"), "", "the honeypot went empty");
    await L.shot(page, "guards-js-result");
    // step 2 at once (under the 3 s trap): its token came with the page
    await page.select("#lb-valuation-details-appointment", "Weekday evening");
    await page.click(".lb-result form button[type=submit]");
    await page.waitForSelector(".lb-panel");
    await L.shot(page, "guards-js-thanks");
    const got = await L.waitLeads(stack, m, 1, 15000, (g) => g[0].updates.length === 1);
    assert.equal(got.length, 1, "the person's lead reached the stand-in");
    assert.equal(got[0].updates.length, 1, "and so did step 2");
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekday evening");
    assert.deepEqual(quarantined(m), [], "nothing of the person's in quarantine");
    await page.close();
  });

  it("a bot's post on the same stack (no token, no challenge) is quarantined, not delivered", async () => {
    const m = L.marker(), v = L.visitor(m);
    const body = new URLSearchParams(Object.assign({ purpose: "sell", consent: "yes" }, v));
    const r = await fetch(stack.web + "/lead/valuation", { method: "POST", body,
      headers: { Accept: "application/json", Origin: stack.web } });
    assert.equal(r.status, 202, "the bot gets what a person whose lead waits gets");
    await L.sleep(1000);
    assert.equal((await L.leads(stack, m)).length, 0);
    assert.equal(quarantined(m).length, 1);
  });

  it("without JavaScript: the SSI-included token and honeypot pass at human speed (contact form)", async () => {
    const page = await L.newPage(browser, { js: false });
    const posts = recordPosts(page);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/contact.html");
    assert.ok(await page.$("form input[type=hidden][name=lb_token]"), "nginx included the token");
    await L.fill(page, "lb-contact", { name: v.name, email: v.email, phone: v.phone }, 60);
    await L.fill(page, "lb-contact", { enquiry: "Buying", property: "3 Mill Lane", property_postcode: "DE1 1JX", message: "Please call after six " + m }, 30);
    await L.fill(page, "lb-contact", { consent: true });
    await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
    assert.match(page.url(), /\/thanks\.html/);
    assert.ok(posts[0].body.get("lb_token"));
    await L.axe(page, "guards-nojs-thanks");
    const got = await L.waitLeads(stack, m, 1);
    assert.equal(got.length, 1, "the person's lead reached the stand-in");
    assert.deepEqual(quarantined(m), []);
    await page.close();
  });
});
