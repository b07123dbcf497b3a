"use strict";
/*
 * widget.test.js: the visitor's side (issue 10) in headless Chromium against the real stack with
 * the shipped config (stack.py --profile shipped). Each test uses its own browser context and its
 * own marker in the lead, and checks what reached the stand-in LeadPro, not only the page.
 */
const { describe, it, before, after } = require("node:test");
const assert = require("node:assert/strict");
const L = require("./lib");

let stack, browser;

before(async () => {
  stack = await L.startStack("shipped");
  browser = await L.launch();
});

after(async () => {
  if (browser) await browser.close();
  if (stack) {
    const r = await stack.stop();
    assert.equal(r.code, 0, "the stack stopped cleanly (the bridge exited 0):\n" + r.stderr);
  }
});

const PERSONAL = (v) => [v.name, v.email, v.phone, v.address, "Marla", "example.com", "07986"];

function noPersonalData(ev, v) {
  const text = JSON.stringify(ev);
  for (const p of PERSONAL(v)) assert.ok(!text.includes(p), "event data carries " + p + ": " + text);
}

/* The error summary and each field's message, as GOV.UK's patterns have them. */
async function errorState(page, prefix) {
  return page.evaluate((prefix) => {
    const s = document.querySelector(".lb-summary");
    const fields = {};
    document.querySelectorAll("[aria-invalid=true]").forEach((i) => {
      const ids = (i.getAttribute("aria-describedby") || "").split(" ");
      const err = ids.map((id) => document.getElementById(id)).find((e) => e && e.classList.contains("lb-error"));
      fields[i.name] = { message: err ? err.textContent : null, sameField: !!err && err.closest(".lb-field") === i.closest(".lb-field") };
    });
    return {
      summary: !!s, focused: document.activeElement === s,
      title: s && s.querySelector("h2") && s.querySelector("h2").textContent,
      links: s ? [...s.querySelectorAll("a")].map((a) => [a.getAttribute("href"), a.textContent]) : [],
      fields
    };
  }, prefix);
}

describe("the valuation widget with JavaScript", () => {
  it("empty, errors, consent required, result and step 2: axe clean, the lead and update at the stand-in, events without personal data", async () => {
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
    await L.axe(page, "valuation-js-empty");

    // everything empty: the summary takes focus, each field has its own message
    await page.click("button[type=submit]");
    await page.waitForSelector(".lb-summary");
    let e = await errorState(page, "lb-valuation");
    assert.equal(e.title, "There is a problem");
    assert.ok(e.focused, "the error summary has focus");
    for (const name of ["address", "postcode", "name", "email", "phone", "consent"]) {
      assert.ok(e.fields[name], "field " + name + " is marked invalid: " + JSON.stringify(e.fields));
      assert.ok(e.fields[name].sameField, name + "'s message sits next to it and is its aria-describedby");
    }
    // messages name the boxes the visitor saw ("Your full name"), never canonical fields
    const text = e.links.map((l) => l[1]).join("\n");
    assert.match(text, /Your full name: /);
    assert.doesNotMatch(text, /last.name|first.name/i);
    assert.ok(e.links.some((l) => l[0] === "#lb-valuation-email"), "the summary links to the field");
    await L.axe(page, "valuation-js-errors");

    // the summary's link moves focus to its field
    await page.click('.lb-summary a[href="#lb-valuation-email"]');
    assert.equal(await page.evaluate(() => document.activeElement.id), "lb-valuation-email");

    // consent is required: all else right, the box unticked: refused locally, nothing sent
    await L.fill(page, "lb-valuation", v);
    await L.sleep(1000);   // the form token's time trap (1 s in this stack)
    await page.click("button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("[aria-invalid=true]").length === 1);
    e = await errorState(page, "lb-valuation");
    assert.deepEqual(Object.keys(e.fields), ["consent"]);
    assert.match(e.fields.consent.message, /privacy policy/);
    assert.equal((await L.leads(stack, m)).length, 0, "no lead without consent");
    await L.axe(page, "valuation-js-consent-error");

    // ticked: the result, formatted, for this property, with the disclaimer
    await L.fill(page, "lb-valuation", { consent: true });
    await page.click("button[type=submit]");
    await page.waitForSelector(".lb-result .lb-numbers");
    const res = await page.evaluate(() => ({
      focus: document.activeElement.className,
      for: document.querySelector(".lb-for").textContent,
      numbers: [...document.querySelectorAll(".lb-numbers dd")].map((d) => d.textContent),
      disclaimer: document.querySelector(".lb-disclaimer").textContent
    }));
    assert.equal(res.for, "For " + v.address + ", " + v.postcode);
    assert.equal(res.numbers.length, 6);
    for (const n of res.numbers) assert.match(n, /^£\d{1,3}(,\d{3})*$/, "formatted by Intl.NumberFormat");
    assert.match(res.disclaimer, /automated estimate/);
    assert.match(res.focus, /lb-result/, "the result takes focus");
    await L.axe(page, "valuation-js-result");
    let got = await L.waitLeads(stack, m, 1);
    assert.equal(got.length, 1, "one lead at the stand-in");
    const lead = got[0].json;
    assert.equal(lead.first_name, "Marla");
    assert.equal(lead.last_name, "Singer" + m);
    assert.equal(lead.gdpr_checkbox, true);
    assert.match(lead.meta.consent, /^privacy policy \S+\/privacy\.html agreed \d{4}-/);
    // shown numbers are the stand-in's
    const avg = got[0].valuation.average_sale_estimation;
    assert.ok(res.numbers.includes("£" + avg.toLocaleString("en-GB")), res.numbers + " has " + avg);

    // step 2: book a visit, goes to the same lead
    await page.select("#lb-valuation-details-appointment", "Weekend");
    await page.click(".lb-result form button[type=submit]");
    await page.waitForSelector(".lb-panel");
    assert.match(await page.$eval(".lb-panel", (p) => p.textContent), /Thank you/);
    await L.axe(page, "valuation-js-thanks");
    got = await L.waitLeads(stack, m, 1, 15000, (g) => g[0].updates.length === 1);
    assert.equal(got[0].updates.length, 1, "step 2 updated the lead");
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekend");

    // events and dataLayer: submit/error/success with form and status, no personal data
    const ev = await L.events(page);
    const types = ev.events.map((x) => x.type + ":" + x.detail.form + ":" + x.detail.status);
    assert.deepEqual(types, ["leadbridge:submit:valuation:sending", "leadbridge:error:valuation:422",
      "leadbridge:submit:valuation:sending", "leadbridge:error:valuation:422",
      "leadbridge:submit:valuation:sending", "leadbridge:success:valuation:created",
      "leadbridge:submit:details:sending", "leadbridge:success:details:updated"]);
    assert.deepEqual(ev.dataLayer.map((x) => x.event + ":" + x.form + ":" + x.status), types);
    for (const x of ev.dataLayer) assert.deepEqual(Object.keys(x).sort(), ["event", "form", "status"]);
    noPersonalData(ev, v);
    assert.deepEqual(page.errors, []);
    await page.close();
  });
});
