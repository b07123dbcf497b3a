"use strict";
/*
 * layout.test.js: the visitor's side (issue 10), part 2: the one-tag embed on other origins, no
 * horizontal overflow from 320 px up, waiting and failing (503 at step 1, a slow API, a network
 * failure). Its own stack (stack.py --profile shipped) and browser, so that it can run beside
 * widget.test.js. Leads are checked at the stand-in, not only on the page.
 */
const { describe, it } = require("node:test");
const assert = require("node:assert/strict");
const L = require("./lib");

let stack, browser;

L.useStack("shipped", (s, b) => { stack = s; browser = b; });


/*
 * A successful answer from the bridge's event loop (every delivered lead) once carried no
 * Access-Control-Allow-Origin (src/handler.c's defer() started the response afresh), so the
 * page on the other origin was told the server could not be reached while the lead was made.
 * Fixed; the whole test now holds (LB_BROWSER_STRICT is kept as a no-op for old scripts).
 */
const CORS_TODO = false;

describe("the one-tag embed on another origin", () => {
  it("renders from the bridge's origin, themed by the host's custom properties, its errors; axe clean", async () => {
    const page = await L.newPage(browser);
    await page.goto(stack.embed + "/", { waitUntil: "networkidle0" });
    await page.waitForSelector("#lb-valuation-address");
    const look = await page.evaluate(() => {
      const b = document.querySelector(".lb .lb-button");
      return { bg: getComputedStyle(b).backgroundColor, font: getComputedStyle(b).fontFamily,
        radius: getComputedStyle(b).borderTopLeftRadius,
        privacy: document.querySelector("#lb-valuation-consent + label a").href };
    });
    assert.equal(look.bg, "rgb(58, 31, 77)", "the host's --lb-brand, not its bare button rule, not our default");
    assert.match(look.font, /Georgia/);
    assert.equal(look.radius, "2px");
    assert.equal(look.privacy, stack.web + "/privacy.html", "consent settings came from the bridge");
    await L.axe(page, "embed-empty");
    await page.click(".lb button[type=submit]");
    await page.waitForSelector(".lb-summary");
    assert.ok(await page.evaluate(() => document.activeElement.classList.contains("lb-summary")));
    assert.ok(await page.$("#lb-valuation-email[aria-invalid=true]"), "the bridge's 422 reached the page");
    await L.axe(page, "embed-errors");
    assert.deepEqual(page.errors, []);
    await page.close();
  });

  it("a valuation and step 2 from the other origin: the host page's attribution at the stand-in, result on the page", async (t) => {
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.embed + "/?utm_source=partner&utm_medium=referral&fbclid=FB-" + m, { waitUntil: "networkidle0" });
    await L.fillValuation(page, v);
    await page.click(".lb button[type=submit]");
    // the lead is made whatever the page is shown
    const got0 = await L.waitLeads(stack, m, 1);
    assert.equal(got0.length, 1);
    const lead = got0[0].json;
    assert.equal(lead.utm_source, "partner", JSON.stringify(lead));
    assert.equal(lead.utm_medium, "referral");
    assert.equal(lead.meta.fbclid, "FB-" + m);
    assert.equal(lead.meta.landing_page, stack.embed + "/");
    try {
      await page.waitForSelector(".lb-result .lb-numbers", { timeout: CORS_TODO ? 8000 : 20000 });
    } catch (e) {
      if (!CORS_TODO) throw e;
      await L.shot(page, "embed-result-hidden-by-cors");
      t.todo(CORS_TODO);   // the lead and its attribution were checked above
      await page.close();
      return;
    }
    await L.axe(page, "embed-result");
    await page.select("#lb-valuation-details-appointment", "Weekend");
    await page.click(".lb-result form button[type=submit]");
    await page.waitForSelector(".lb-panel");
    await L.axe(page, "embed-thanks");
    const got = await L.waitLeads(stack, m, 1, 15000, (g) => g[0].updates.length === 1);
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekend");

    const m2 = L.marker(), v2 = L.visitor(m2);
    await page.goto(stack.embed + "/contact.html", { waitUntil: "networkidle0" });
    await page.waitForSelector("#lb-contact-name");
    await L.fill(page, "lb-contact", { name: v2.name, email: v2.email, phone: v2.phone, property_postcode: "DE1 1JX",
      message: "Embed " + m2, consent: true });
    await L.sleep(600);
    await page.click(".lb button[type=submit]");
    await page.waitForSelector(".lb-panel");
    await L.axe(page, "embed-contact-thanks");
    assert.equal((await L.waitLeads(stack, m2, 1)).length, 1);
    await page.close();
  });

  it("an origin not in the form's origins gets nothing through; the visitor is told, the values stay", async () => {
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.stranger + "/contact.html", { waitUntil: "networkidle0" });
    await page.waitForSelector("#lb-contact-name");
    await L.fill(page, "lb-contact", { name: v.name, email: v.email, phone: v.phone, property_postcode: "DE1 1JX",
      message: "Stranger " + m });
    await L.sleep(600);
    await page.click(".lb button[type=submit]");
    await page.waitForSelector(".lb-summary");
    assert.match(await page.$eval(".lb-summary", (s) => s.textContent), /could not reach our server/);
    assert.equal(await page.$eval("#lb-contact-email", (e) => e.value), v.email, "the values stay for a retry");
    await L.sleep(500);
    assert.equal((await L.leads(stack, m)).length, 0, "nothing from the unknown origin reached the API");
    await page.close();
  });
});

const BIG = { status: "created", lead: { ref: "x" }, targets: { leadpro: "created" },
  valuation: { status: "Success", sale: { min: 9000000, avg: 10000000, max: 11000000 },
    rent: { min: 36000, avg: 40000, max: 44000 } } };

describe("no horizontal overflow, 320 px to 1280 px, values up to £10,000,000", () => {
  for (const width of [320, 375, 1280]) {
    it(width + " px: the form, its errors, a £10,000,000 result (JS and no JS), the embed", async () => {
      const page = await L.newPage(browser, { width });
      await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
      assert.deepEqual(await L.overflow(page), [], "empty form");
      await page.click("button[type=submit]");
      await page.waitForSelector(".lb-summary");
      assert.deepEqual(await L.overflow(page), [], "errors");
      if (width === 375) assert.ok(await page.$eval(".lb-summary", (s) => {
        const r = s.getBoundingClientRect();
        return r.top < innerHeight && r.bottom > 0;
      }), "on a phone the summary is on screen");
      await L.fill(page, "lb-valuation", L.visitor("w" + width));
      await L.fill(page, "lb-valuation", { consent: true });
      await page.setRequestInterception(true);
      const fake = (r) => {
        if (r.method() === "POST" && r.url().endsWith("/lead/valuation"))
          r.respond({ status: 200, contentType: "application/json", body: JSON.stringify(BIG) });
        else r.continue();
      };
      page.on("request", fake);
      await page.click("button[type=submit]");
      await page.waitForSelector(".lb-result .lb-numbers");
      const shown = await page.$$eval(".lb-numbers dd", (d) => d.map((x) => x.textContent));
      assert.deepEqual(shown, ["£9,000,000", "£10,000,000", "£11,000,000", "£36,000", "£40,000", "£44,000"]);
      assert.deepEqual(await L.overflow(page), [], "result");
      await L.axe(page, "valuation-js-result-10m-" + width);

      const nojs = await L.newPage(browser, { width, js: false });
      await nojs.goto(stack.web + "/valuation-result.html?status=created&valuation=Success&sale_min=9000000" +
        "&sale_avg=10000000&sale_max=11000000&rent_min=36000&rent_avg=40000&rent_max=44000&lb_ref=x");
      assert.deepEqual(await nojs.$$eval(".lb-numbers dd", (d) => d.map((x) => x.textContent)), shown);
      assert.deepEqual(await L.overflow(nojs), [], "no-JS result");
      await L.axe(nojs, "valuation-nojs-result-10m-" + width);
      await nojs.close();

      page.off("request", fake);
      await page.setRequestInterception(false);
      await page.goto(stack.embed + "/", { waitUntil: "networkidle0" });
      await page.waitForSelector("#lb-valuation-address");
      assert.deepEqual(await L.overflow(page), [], "embed");
      await L.shot(page, "embed-" + width);
      await page.close();
    });
  }
});

describe("waiting and failing", () => {
  it("LeadPro 503 at step 1: queued with a reference, step 2 books the visit; both reach the lead once the outbox delivers", async () => {
    await L.mode(stack, { api: "leadpro", mode: "unavailable", count: 1 });
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
    await L.fillValuation(page, v);
    await page.click("button[type=submit]");
    await page.waitForSelector(".lb-result");
    const text = await page.$eval(".lb-result", (r) => r.textContent);
    assert.match(text, /busy right now/);
    assert.doesNotMatch(text, /503|HTTP|Service Unavailable/);
    assert.ok(await page.$(".lb-result form input[name=lb_ref]"), "step 2 is offered with a reference");
    await L.axe(page, "valuation-js-queued");
    await page.select("#lb-valuation-details-appointment", "Weekday morning");
    await page.click(".lb-result form button[type=submit]");
    await page.waitForSelector(".lb-panel");
    await L.axe(page, "valuation-js-queued-thanks");
    const got = await L.waitLeads(stack, m, 1, 30000, (g) => g[0].updates.length === 1);
    assert.equal(got.length, 1, "the queued lead was delivered");
    assert.equal(got[0].updates.length, 1, "step 2 went to it after the create");
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekday morning");
    const ev = await L.events(page);
    const st = ev.events.map((x) => x.detail.status);
    assert.deepEqual(st.slice(0, 3), ["sending", "queued", "sending"]);
    assert.ok(["queued", "updated"].includes(st[3]), st);   // "updated": the retry was quicker
    await page.close();
  });

  it("LeadPro 503 at step 1 without JavaScript: the result page offers step 2, and both arrive", async () => {
    await L.mode(stack, { api: "leadpro", mode: "unavailable", count: 1 });
    const page = await L.newPage(browser, { js: false });
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html");
    await L.fillValuation(page, v);
    await L.submitNoJs(page);
    assert.match(page.url(), /valuation-result\.html\?.*status=queued/);
    assert.match(await page.$eval("#no-estimate", (e) => e.textContent), /busy right now/);
    await page.select("#lb-details-appointment", "Weekday evening");
    await L.submitNoJs(page);
    assert.match(page.url(), /thanks\.html/);
    const got = await L.waitLeads(stack, m, 1, 30000, (g) => g[0].updates.length === 1);
    assert.equal(got.length, 1);
    assert.equal(got[0].updates.length, 1);
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekday evening");
    await page.close();
  });

  it("a slow API: the button says so (aria-busy, its text) until the answer comes", async () => {
    await L.mode(stack, { api: "leadpro", mode: "slow", delay: 3, count: 1 });
    const page = await L.newPage(browser, { width: 375 });
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
    await L.fillValuation(page, v);
    const t0 = Date.now();
    await page.click("button[type=submit]");
    await page.waitForSelector("button[aria-busy=true]", { timeout: 1000 });
    const busy = await page.evaluate(() => ({ text: document.querySelector(".lb-form button").textContent,
      form: document.querySelector(".lb-form").getAttribute("aria-busy"),
      live: document.querySelector("[aria-live]").textContent }));
    assert.equal(busy.text, "Working out your estimate\u2026");
    assert.equal(busy.form, "true");
    await L.shot(page, "valuation-js-busy");
    await page.waitForSelector(".lb-result .lb-numbers", { timeout: 20000 });
    assert.ok(Date.now() - t0 >= 2500, "the answer took the API's time");
    assert.equal(await page.$eval(".lb-form button", (b) => b.getAttribute("aria-busy")), null);
    await page.waitForFunction(() => /estimate is ready/.test(document.querySelector("[aria-live]").textContent));
    assert.equal((await L.waitLeads(stack, m, 1)).length, 1);
    await page.close();
  });

  it("a network failure says what happened and keeps every value", async () => {
    const page = await L.newPage(browser);
    const v = L.visitor(L.marker());
    await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
    await L.fillValuation(page, v);
    await page.setRequestInterception(true);
    page.on("request", (r) => (r.method() === "POST" ? r.abort("internetdisconnected") : r.continue()));
    await page.click("button[type=submit]");
    await page.waitForSelector(".lb-summary");
    assert.match(await page.$eval(".lb-summary", (s) => s.textContent), /could not reach our server.*still here/);
    assert.equal(await page.$eval("#lb-valuation-email", (e) => e.value), v.email);
    assert.equal(await page.$eval("#lb-valuation-consent", (e) => e.checked), true);
    await L.axe(page, "valuation-js-network-error");
    const ev = await L.events(page);
    assert.deepEqual(ev.events.map((x) => x.type + ":" + x.detail.status), ["leadbridge:submit:sending", "leadbridge:error:network"]);
    await page.close();
  });
});
