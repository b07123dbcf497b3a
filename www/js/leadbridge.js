/*
 * leadbridge.js: the attribution script and progressive enhancement for leadbridge forms.
 *
 * 1. Attribution: UTM parameters and click ids in the page's URL are kept for 30 days in a
 *    first-party cookie (lb_attr), so a visitor who lands from an ad and converts three pages
 *    later is still attributed. The bridge reads the cookie; the script also adds landing_page
 *    and referrer fields to every leadbridge form.
 * 2. Forms marked data-leadbridge are posted with fetch and answered in place (JSON); without
 *    JavaScript the same forms post normally and the bridge redirects. Nothing personal is stored.
 */
(function () {
  "use strict";
  var KEYS = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id",
              "gclid", "fbclid", "msclkid"];
  var COOKIE = "lb_attr";

  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return parts[i].slice(eq + 1);
    }
    return null;
  }

  function rememberAttribution() {
    var params = new URLSearchParams(window.location.search);
    var kept = new URLSearchParams();
    KEYS.forEach(function (k) {
      var v = params.get(k);
      if (v) kept.set(k, v.slice(0, 200));
    });
    if (kept.toString() === "") return;
    document.cookie = COOKIE + "=" + encodeURIComponent(kept.toString()) +
      "; path=/; max-age=" + 30 * 86400 + "; SameSite=Lax";
    try {
      sessionStorage.setItem("lb_landing", window.location.href.split("#")[0]);
      sessionStorage.setItem("lb_referrer", document.referrer || "");
    } catch (e) { /* storage may be off: the Referer header still works */ }
  }

  function stripQuery(url) {
    return url ? url.split("#")[0].split("?")[0] : "";
  }

  function addHidden(form, name, value) {
    if (!value || form.querySelector("input[name='" + name + "']")) return;
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    form.appendChild(input);
  }

  function money(n) {
    return "\u00a3" + Number(n).toLocaleString("en-GB", {maximumFractionDigits: 0});
  }

  function showErrors(form, body) {
    var box = document.querySelector("[data-lb-errors]");
    var err = (body && body.error) || {code: "error", message: "Something went wrong."};
    var lines = [err.message];
    form.querySelectorAll(".error").forEach(function (e) { e.remove(); });
    if (err.fields) {
      Object.keys(err.fields).forEach(function (f) {
        lines.push(f.replace(/_/g, " ") + ": " + err.fields[f]);
      });
    }
    if (box) {
      box.textContent = lines.join(" \u2014 ");
      box.hidden = false;
    }
  }

  function showValuation(body) {
    var section = document.querySelector("[data-lb-result]");
    if (!section) return;
    var v = body.valuation || {};
    ["sale", "rent"].forEach(function (kind) {
      var block = section.querySelector("[data-lb-" + kind + "]");
      if (!block) return;
      block.hidden = !v[kind];
      if (v[kind]) {
        ["min", "avg", "max"].forEach(function (k) {
          var el = section.querySelector("[data-lb='" + kind + "." + k + "']");
          if (el) el.textContent = money(v[kind][k]);
        });
      }
    });
    section.querySelector("[data-lb-valuation-missing]").hidden = !!(v.sale || v.rent);
    var ref = section.querySelector("input[name='lb_ref']");
    if (ref && body.lead && body.lead.ref) ref.value = body.lead.ref;
    section.hidden = false;
  }

  function enhance(form) {
    addHidden(form, "landing_page", stripQuery(sessionStorage.getItem("lb_landing") || window.location.href));
    addHidden(form, "referrer", stripQuery(sessionStorage.getItem("lb_referrer") || document.referrer));
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var button = form.querySelector("button[type=submit]");
      if (button) button.disabled = true;
      var box = document.querySelector("[data-lb-errors]");
      if (box) box.hidden = true;
      fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: {"Accept": "application/json"},
        credentials: "same-origin"
      }).then(function (res) {
        return res.json().then(function (body) { return {status: res.status, body: body}; });
      }).then(function (r) {
        if (r.status >= 400) {
          showErrors(form, r.body);
          if (button) button.disabled = false;
          return;
        }
        if (form.getAttribute("data-leadbridge") === "valuation") {
          form.hidden = true;
          showValuation(r.body);
        } else {
          form.hidden = true;
          var done = form.parentNode.querySelector("[data-lb-done]");
          if (done) done.hidden = false;
        }
      }).catch(function () {
        showErrors(form, null);
        if (button) button.disabled = false;
      });
    });
  }

  rememberAttribution();
  if (readCookie(COOKIE) === null && window.location.search) rememberAttribution();
  document.querySelectorAll("form[data-leadbridge]").forEach(enhance);
})();
