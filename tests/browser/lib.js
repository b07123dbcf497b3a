"use strict";
/*
 * lib.js: what the browser tests share. The real stack (stack.py: stand-in APIs, the bridge,
 * nginx, a second nginx for the other origins), Debian's Chromium through puppeteer-core (never a
 * downloaded browser), axe-core on a page, screenshots, the stand-in's control API.
 *
 * Environment (set by tests/browser/run): LB_BROWSER_OUT, the folder for screenshots, axe
 * results and the stacks' files; CHROMIUM, the browser (default /usr/bin/chromium).
 */
const assert = require("node:assert/strict");
const { before, after } = require("node:test");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const puppeteer = require("puppeteer-core");

const OUT = process.env.LB_BROWSER_OUT || fs.mkdtempSync(path.join(os.tmpdir(), "lb-browser-"));
const SHOTS = path.join(OUT, "screenshots");
const AXE_LOG = path.join(OUT, "axe.jsonl");
fs.mkdirSync(SHOTS, { recursive: true });
// each test file runs in its own process (node --test): its name keeps their files apart
const TAG = path.basename(process.argv[1] || "run", ".js").replace(/\.test$/, "");
const AXE_SOURCE = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* ---- the stack ---- */

function startStack(profile) {
  const dir = path.join(OUT, "stack-" + TAG + "-" + profile);
  fs.rmSync(dir, { recursive: true, force: true });
  const p = spawn("python3", [path.join(__dirname, "stack.py"), "--profile", profile, "--dir", dir],
    { stdio: ["pipe", "pipe", "pipe"], env: Object.assign({}, process.env, { PYTHONDONTWRITEBYTECODE: "1" }) });
  let err = "";
  p.stderr.on("data", (d) => { err += d; });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => { p.kill("SIGTERM"); reject(new Error("stack.py did not start in 60 s:\n" + err)); }, 60000);
    p.stdout.on("data", (d) => {
      out += d;
      const nl = out.indexOf("\n");
      if (nl < 0) return;
      clearTimeout(timer);
      const info = JSON.parse(out.slice(0, nl));
      info.stop = () => new Promise((res) => {
        const kill = setTimeout(() => p.kill("SIGTERM"), 30000);
        p.on("exit", (code) => {
          clearTimeout(kill);
          res({ code, stderr: err });
        });
        p.stdin.end();
      });
      info.stderr = () => err;
      resolve(info);
    });
    p.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error("stack.py exited " + code + " before it started:\n" + err));
    });
  });
}

/*
 * Registers the file's before/after hooks: its own stack (profile) and browser, handed to set
 * once started; at the end both stop, and the bridge must have exited 0.
 */
function useStack(profile, set) {
  let stack, browser;
  before(async () => {
    stack = await startStack(profile);
    browser = await launch();
    set(stack, browser);
  });
  after(async () => {
    if (browser) await browser.close();
    if (stack) {
      const r = await stack.stop();
      assert.equal(r.code, 0, "the stack stopped cleanly (the bridge exited 0):\n" + r.stderr);
    }
  });
}

async function standin(stack, method, p, body) {
  const r = await fetch(stack.standin + p, {
    method, headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined
  });
  assert.equal(r.status, 200, "stand-in " + p);
  return r.json();
}

/* The leads the stand-in LeadPro holds whose body contains marker (a test's own token). */
async function leads(stack, marker) {
  const all = (await standin(stack, "GET", "/_control/leads?api=leadpro")).leads;
  return all.filter((l) => (l.body || "").includes(marker));
}

/* Waits (bounded) until the stand-in holds n leads carrying marker and check(leads) is true. */
async function waitLeads(stack, marker, n, ms = 15000, check = () => true) {
  const end = Date.now() + ms;
  let got = [];
  while (Date.now() < end) {
    got = await leads(stack, marker);
    if (got.length >= n && check(got)) return got;
    await sleep(100);
  }
  return got;
}

const mode = (stack, m) => standin(stack, "POST", "/_control/mode", m);

/* ---- the browser ---- */

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "lb-chromium-"));
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    userDataDir: profile,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage", "--user-data-dir=" + profile],
    protocolTimeout: 60000
  });
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return browser;
}

/*
 * A page in a fresh browser context (its own cookies), width px wide, recording the widget's
 * events and dataLayer pushes (window.__lbEvents, window.dataLayer).
 */
async function newPage(browser, { width = 1280, js = true } = {}) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width, height: width < 600 ? 740 : 900 });
  await page.setJavaScriptEnabled(js);
  page.setDefaultTimeout(20000);
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  await page.evaluateOnNewDocument(() => {
    window.dataLayer = [];
    window.__lbEvents = [];
    ["submit", "success", "error"].forEach((t) => document.addEventListener("leadbridge:" + t,
      (e) => window.__lbEvents.push({ type: e.type, detail: e.detail })));
  });
  page.on("response", async (r) => {
    if (r.request().method() === "POST" && r.status() >= 400 && process.env.LB_BROWSER_DEBUG)
      console.log("POST", r.url(), r.status(), await r.text().catch(() => ""));
  });
  const close = page.close.bind(page);
  page.close = async () => { await close(); await ctx.close(); };
  return page;
}

let shotSeq = 0;
async function shot(page, name) {
  const file = path.join(SHOTS, TAG + "-" + String(++shotSeq).padStart(3, "0") + "-" + name.replace(/[^A-Za-z0-9_-]+/g, "_") + ".png");
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/*
 * axe-core on the page as it is now: asserts 0 violations (and logs the result per state).
 * axe needs JavaScript; a page with JavaScript off cannot run it (its timers never fire), so
 * there axe runs on a twin: the same HTML as the visitor's page (noscript shown, as a browser
 * without JavaScript shows it), at the same address and size, with every script blocked.
 */
async function axe(page, state) {
  let target = page, twin = null;
  await shot(page, state);   // first: a page behind the twin renders no frames
  if (!page.isJavaScriptEnabled()) {
    const html = (await page.content()).replace(/<noscript>/g, "<div>").replace(/<\/noscript>/g, "</div>");
    const url = page.url();
    twin = await page.browserContext().newPage();
    await twin.setViewport(page.viewport());
    await twin.setRequestInterception(true);
    twin.on("request", (r) => {
      if (r.isNavigationRequest() && r.url() === url) r.respond({ status: 200, contentType: "text/html; charset=utf-8", body: html });
      else if (r.resourceType() === "script") r.abort();
      else r.continue();
    });
    await twin.goto(url, { waitUntil: "load" });
    target = twin;
  }
  try {
    await target.evaluate(AXE_SOURCE);
    const r = await target.evaluate(() => window.axe.run(document, {
      resultTypes: ["violations"],
      runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] }
    }));
    const violations = r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.map((n) => n.target.join(" ") + ": " + n.failureSummary) }));
    fs.appendFileSync(AXE_LOG, JSON.stringify({ state, url: page.url().replace(/\?.*/, ""), passes: r.passes.length,
      violations: violations.length }) + "\n");
    assert.deepEqual(violations, [], "axe violations in state " + state + ":\n" + JSON.stringify(violations, null, 2));
  } finally {
    if (twin) {
      await twin.close();
      await page.bringToFront();
    }
  }
}

/* Horizontal overflow: the page scrolls sideways, or an element of the widget sticks out. */
async function overflow(page) {
  return page.evaluate(() => {
    const vw = document.documentElement.clientWidth, out = [];
    if (document.documentElement.scrollWidth > vw) out.push("page scrollWidth " + document.documentElement.scrollWidth + " > " + vw);
    document.querySelectorAll(".lb, .lb *").forEach((el) => {
      const r = el.getBoundingClientRect();
      if (r.width && (r.right > vw + 0.5 || r.left < -0.5) && !el.closest(".lb-hp, .lb-vh"))
        out.push((el.id || el.className || el.tagName) + " right " + Math.round(r.right) + " > " + vw);
      if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === "visible" &&
          el.clientWidth && !el.closest(".lb-hp, .lb-vh") && el.tagName !== "SELECT")
        out.push((el.id || el.className || el.tagName) + " content " + el.scrollWidth + " > " + el.clientWidth);
    });
    return out;
  });
}

/* ---- filling forms ---- */

let seq = 0;
function marker() {
  return "t" + process.pid.toString(36) + (++seq).toString(36) + Math.random().toString(36).slice(2, 6);
}

/* A visitor for the valuation form; m (a marker) makes the address, name and email unique. */
function visitor(m) {
  return {
    address: "12 Example Street " + m, postcode: "DE1 1JX", bedrooms: "3",
    name: "Marla Singer" + m, email: "marla." + m + "@example.com", phone: "07986 000000"
  };
}

/* Types values into #<prefix>-<name> (text inputs), selects, ticks; delay: ms per key. */
async function fill(page, prefix, values, delay = 0) {
  for (const [k, v] of Object.entries(values)) {
    const sel = "#" + prefix + "-" + k;
    await page.waitForSelector(sel);
    const tag = await page.$eval(sel, (e) => e.tagName + ":" + e.type);
    if (tag.startsWith("SELECT")) await page.select(sel, v);
    else if (tag === "INPUT:checkbox") {
      const on = await page.$eval(sel, (e) => e.checked);
      if (on !== !!v) await page.click(sel);
    } else {
      await page.$eval(sel, (e) => { e.value = ""; });
      await page.type(sel, v, { delay });
    }
  }
}

/* Presses Tab (at most 60 times) until the element matching sel (or with id sel) has focus. */
async function tabTo(page, sel) {
  const css = /^[A-Za-z][\w-]*$/.test(sel) ? "#" + sel : sel;
  for (let i = 0; i < 60; i++) {
    if (await page.evaluate((c) => !!document.activeElement && document.activeElement.matches(c), css)) return;
    await page.keyboard.press("Tab");
  }
  assert.fail("Tab never reached " + css);
}

/* Fills the whole valuation form (JS or not) with v, ticks consent, waits out the 0.5 s time trap. */
async function fillValuation(page, v, prefix = "lb-valuation") {
  await page.waitForSelector("#" + prefix + "-address");
  await fill(page, prefix, v);
  await fill(page, prefix, { consent: true });
  await sleep(600);
}

/* Submits a form without JavaScript and waits for the page it is sent to. */
async function submitNoJs(page, sel = "form button[type=submit]") {
  await Promise.all([page.waitForNavigation(), page.click(sel)]);
}

async function events(page) {
  return page.evaluate(() => ({ events: window.__lbEvents, dataLayer: window.dataLayer }));
}

module.exports = { OUT, SHOTS, AXE_LOG, sleep, startStack, useStack, standin, leads, waitLeads, mode, launch, newPage, shot, axe,
  overflow, marker, visitor, fill, fillValuation, submitNoJs, tabTo, events };
