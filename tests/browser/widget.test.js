"use strict";
/*
 * widget.test.js: the visitor's side (issue 10) in headless Chromium against the real stack with
 * the shipped config (stack.py --profile shipped). Each test uses its own browser context and its
 * own marker in the lead, and checks what reached the stand-in LeadPro, not only the page.
 */
const { describe, it } = require("node:test");
const assert = require("node:assert/strict");
const L = require("./lib");

let stack, browser;

L.useStack("shipped", (s, b) => { stack = s; browser = b; });

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
    await L.sleep(600);    // the form token's time trap (0.5 s in this stack)
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

describe("keyboard only", () => {
  it("the valuation and step 2 by Tab, typing, Space and Enter; the error summary's links by keyboard", async () => {
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html", { waitUntil: "networkidle0" });
    const k = page.keyboard;
    // straight to the button, Enter: the summary has focus; Tab to its first link, Enter: the field
    await L.tabTo(page, "button.lb-button");
    await k.press("Enter");
    await page.waitForSelector(".lb-summary");
    assert.equal(await page.evaluate(() => document.activeElement.className), "lb-summary");
    await k.press("Tab");
    const href = await page.evaluate(() => document.activeElement.getAttribute("href"));
    assert.equal(href, "#lb-valuation-address");
    await k.press("Enter");
    assert.equal(await page.evaluate(() => document.activeElement.id), "lb-valuation-address");
    // every box in order, by keyboard
    await k.type(v.address, { delay: 15 });
    for (const [id, text] of [["postcode", v.postcode], ["bedrooms", v.bedrooms]]) {
      await L.tabTo(page, "lb-valuation-" + id);
      await k.type(text, { delay: 15 });
    }
    await L.tabTo(page, "lb-valuation-property_type");
    await k.press("ArrowDown");                       // Semi-detached
    for (const [id, text] of [["name", v.name], ["email", v.email], ["phone", v.phone]]) {
      await L.tabTo(page, "lb-valuation-" + id);
      await k.type(text, { delay: 15 });
    }
    await L.tabTo(page, "lb-valuation-consent");
    await k.press("Space");
    assert.equal(await page.$eval("#lb-valuation-consent", (c) => c.checked), true);
    await L.tabTo(page, "button.lb-button");
    await k.press("Enter");
    await page.waitForSelector(".lb-result .lb-numbers");
    await L.shot(page, "keyboard-result");
    // step 2: Tab from the result to the visit's time, ArrowDown, Tab to its button, Enter
    await L.tabTo(page, "lb-valuation-details-appointment");
    await k.press("ArrowDown");                       // Weekday evening
    await L.tabTo(page, ".lb-result form button.lb-button");
    await k.press("Enter");
    await page.waitForSelector(".lb-panel");
    await L.shot(page, "keyboard-thanks");
    const got = await L.waitLeads(stack, m, 1, 15000, (g) => g[0].updates.length === 1);
    assert.equal(got.length, 1);
    assert.equal(got[0].json.property_type, "semi-detached");
    assert.equal(got[0].json.gdpr_checkbox, true);
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekday evening");
    await page.close();
  });
});

describe("without JavaScript", () => {
  it("the valuation: a rejected post comes back with the values kept and per-field messages, then result and step 2", async () => {
    const page = await L.newPage(browser, { js: false });
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/valuation.html");
    await L.axe(page, "valuation-nojs-empty");
    await L.fill(page, "lb-valuation", Object.assign({}, v, { name: "Marla", email: "marla." + m + "@" }));
    await L.fill(page, "lb-valuation", { property_type: "Flat" });
    await L.sleep(600);
    await L.submitNoJs(page);
    const url = page.url();
    assert.match(url, /\/valuation\.html\?error=invalid_fields&.*lb_error=[0-9a-f]{32}/);
    assert.ok(!url.includes(m), "no personal data in the address");
    const st = await page.evaluate(() => {
      const val = (id) => document.getElementById(id).value;
      const msg = (id) => {
        const i = document.getElementById(id), d = (i.getAttribute("aria-describedby") || "").split(" ");
        const e = d.map((x) => document.getElementById(x)).find((x) => x && x.classList.contains("lb-error"));
        return i.getAttribute("aria-invalid") === "true" && e ? e.textContent : null;
      };
      return {
        focus: document.activeElement && document.activeElement.id,
        values: ["address", "postcode", "bedrooms", "name", "email", "phone"].map((k) => val("lb-valuation-" + k)),
        type: val("lb-valuation-property_type"),
        name: msg("lb-valuation-name"), email: msg("lb-valuation-email"), consent: msg("lb-valuation-consent"),
        address: msg("lb-valuation-address"),
        links: [...document.querySelectorAll(".lb-summary a")].map((a) => a.textContent)
      };
    });
    assert.equal(st.focus, "lb-valuation-summary", "the summary has focus (autofocus)");
    assert.deepEqual(st.values, [v.address, v.postcode, v.bedrooms, "Marla", "marla." + m + "@", v.phone]);
    assert.equal(st.type, "Flat");
    assert.match(st.name, /full name/);
    assert.match(st.email, /email/);
    assert.match(st.consent, /privacy policy/);
    assert.equal(st.address, null);
    assert.ok(st.links.some((t) => t.startsWith("Your full name: ")), st.links);
    assert.equal((await L.leads(stack, m)).length, 0);
    await L.axe(page, "valuation-nojs-errors");

    await L.fill(page, "lb-valuation", { name: v.name, email: v.email, consent: true });
    await L.sleep(600);
    await L.submitNoJs(page);
    assert.match(page.url(), /\/valuation-result\.html\?/);
    const nums = await page.$$eval(".lb-numbers dd", (d) => d.map((x) => x.textContent.trim()));
    assert.equal(nums.length, 6);
    for (const n of nums) assert.match(n, /^£\d{1,3}(,\d{3})*$/, "formatted without JavaScript too");
    await L.axe(page, "valuation-nojs-result");
    await page.select("#lb-details-appointment", "Weekend");
    await L.submitNoJs(page);
    assert.match(page.url(), /\/thanks\.html/);
    await L.axe(page, "valuation-nojs-thanks");
    const got = await L.waitLeads(stack, m, 1, 15000, (g) => g[0].updates.length === 1);
    assert.equal(got.length, 1, "one lead at the stand-in");
    assert.equal(got[0].json.last_name, "Singer" + m);
    assert.equal(got[0].json.property_type, "flat-maisonette");
    assert.equal(got[0].updates[0].json.meta["Preferred appointment"], "Weekend");
    await page.close();
  });

  it("the contact page: values kept after a rejected post, then thanks; home and privacy pages pass axe", async () => {
    const page = await L.newPage(browser, { js: false });
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/");
    await L.axe(page, "home-nojs");
    assert.ok(await page.$('noscript, a[href="/contact.html"]'));
    await page.goto(stack.web + "/privacy.html");
    await L.axe(page, "privacy");
    await page.goto(stack.web + "/contact.html");
    await L.axe(page, "contact-nojs-empty");
    await L.fill(page, "lb-contact", { name: v.name, email: "nope" + m, phone: v.phone, enquiry: "Renting",
      property: "Flat 2, 5 Station Road", property_postcode: "DE1 2AB", message: "A flat near the station " + m });
    await L.sleep(600);
    await L.submitNoJs(page);
    const kept = await page.evaluate(() => ["name", "email", "phone", "enquiry", "property", "property_postcode", "message"]
      .map((k) => document.getElementById("lb-contact-" + k).value));
    assert.deepEqual(kept, [v.name, "nope" + m, v.phone, "Renting", "Flat 2, 5 Station Road", "DE1 2AB",
      "A flat near the station " + m]);
    assert.equal(await page.$eval("#lb-contact-email", (e) => e.getAttribute("aria-invalid")), "true");
    await L.axe(page, "contact-nojs-errors");
    await L.fill(page, "lb-contact", { email: v.email, consent: true });
    await L.sleep(600);
    await L.submitNoJs(page);
    assert.match(page.url(), /\/thanks\.html/);
    await L.axe(page, "contact-nojs-thanks");
    const got = await L.waitLeads(stack, m, 1);
    assert.equal(got.length, 1);
    assert.equal(got[0].json.type, "let");
    assert.equal(got[0].json.advert_postcode, "DE1 2AB");
    await page.close();
  });
});

describe("the contact widget with JavaScript (one tag on the home page)", () => {
  it("renders, errors, thanks: axe clean, the lead at the stand-in", async () => {
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/", { waitUntil: "networkidle0" });
    await page.waitForSelector("#lb-contact-name");
    assert.equal(await page.$("noscript"), null, "the widget replaced the no-JS link");
    await L.axe(page, "home-js-empty");
    await page.click("[data-leadbridge-form=contact] button[type=submit]");
    await page.waitForSelector(".lb-summary");
    await L.axe(page, "home-js-errors");
    await L.fill(page, "lb-contact", { name: v.name, email: v.email, phone: v.phone, enquiry: "Buying",
      property: "3 Mill Lane", property_postcode: "DE22 1AA", message: "Is 3 Mill Lane still for sale? " + m, consent: true });
    await L.sleep(600);
    await page.click("[data-leadbridge-form=contact] button[type=submit]");
    await page.waitForSelector(".lb-panel");
    assert.match(await page.$eval(".lb-panel", (p) => p.textContent), /Thank you/);
    await L.axe(page, "home-js-thanks");
    const got = await L.waitLeads(stack, m, 1);
    assert.equal(got.length, 1);
    assert.equal(got[0].json.type, "sale");
    assert.equal(got[0].json.advert_address, "3 Mill Lane");
    assert.equal(got[0].json.gdpr_checkbox, true);
    await page.goto(stack.web + "/contact.html", { waitUntil: "networkidle0" });
    await L.axe(page, "contact-js-empty");
    await page.close();
  });
});

describe("attribution that survives", () => {
  it("with JavaScript: UTMs, gclid, landing page and the external referrer after 2 more page views", async () => {
    const page = await L.newPage(browser);
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/?utm_source=newsletter&utm_medium=email&utm_campaign=spring&gclid=GC-" + m,
      { referer: "http://search.example/results?q=estate+agents", waitUntil: "networkidle0" });
    // Chromium's default policy (strict-origin-when-cross-origin) gives the page the origin only
    assert.equal(await page.evaluate(() => document.referrer), "http://search.example/");
    await Promise.all([page.waitForNavigation(), page.click('.hero a[href="/contact.html"]')]);
    await Promise.all([page.waitForNavigation({ waitUntil: "networkidle0" }), page.click('nav a[href="/valuation.html"]')]);
    await L.fillValuation(page, v);
    await page.click("button[type=submit]");
    await page.waitForSelector(".lb-result");
    const got = await L.waitLeads(stack, m, 1);
    assert.equal(got.length, 1);
    const lead = got[0].json;
    assert.equal(lead.utm_source, "newsletter", JSON.stringify(lead));
    assert.equal(lead.utm_medium, "email");
    assert.equal(lead.utm_campaign, "spring");
    assert.equal(lead.meta.gclid, "GC-" + m);
    assert.equal(lead.meta.landing_page, stack.web + "/");
    assert.equal(lead.meta.referrer, "http://search.example/", "the first external referrer, not our own pages");
    await page.close();
  });

  it("without JavaScript (nginx-attribution.conf): UTMs and gclid after 2 more page views; first touch kept, last touch updated", async () => {
    const page = await L.newPage(browser, { js: false });
    const m = L.marker(), v = L.visitor(m);
    await page.goto(stack.web + "/?utm_source=newsletter&utm_campaign=spring&gclid=GC-" + m);
    await L.submitNoJs(page, '.hero a[href="/contact.html"]');
    await L.submitNoJs(page, 'nav a[href="/valuation.html"]');
    await L.fill(page, "lb-valuation", v);
    await L.fill(page, "lb-valuation", { consent: true });
    await L.sleep(600);
    await L.submitNoJs(page);
    assert.match(page.url(), /valuation-result\.html/);
    let got = await L.waitLeads(stack, m, 1);
    assert.equal(got.length, 1);
    assert.equal(got[0].json.utm_source, "newsletter", JSON.stringify(got[0].json));
    assert.equal(got[0].json.utm_campaign, "spring");
    assert.equal(got[0].json.meta.gclid, "GC-" + m);
    // a second landing from an ad: last touch is the ad, first touch still the newsletter
    const m2 = L.marker(), v2 = L.visitor(m2);
    await page.goto(stack.web + "/?utm_source=ads&utm_medium=cpc&gclid=AD-" + m2);
    await L.submitNoJs(page, 'nav a[href="/contact.html"]');
    await L.submitNoJs(page, 'nav a[href="/valuation.html"]');
    await L.fill(page, "lb-valuation", v2);
    await L.fill(page, "lb-valuation", { consent: true });
    await L.sleep(600);
    await L.submitNoJs(page);
    got = await L.waitLeads(stack, m2, 1);
    assert.equal(got.length, 1);
    assert.equal(got[0].json.utm_source, "ads");
    assert.equal(got[0].json.meta.gclid, "AD-" + m2);
    assert.match(got[0].json.meta.first_touch, new RegExp("utm_source=newsletter.*gclid=GC-" + m));
    await page.close();
  });
});

