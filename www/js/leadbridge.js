/*
 * leadbridge.js: the visitor's side of leadbridge. No framework, no build step; one tag:
 *
 *   <div data-leadbridge-form="valuation"></div>           (or "contact")
 *   <script src="https://bridge.example/js/leadbridge.js" defer></script>
 *
 * 1. Attribution, first party: UTMs and click ids in the page's address are kept 30 days in the
 *    host site's cookies lb_attr (last touch) and lb_attr_first (first touch), with the landing
 *    page and the first external referrer (lb_pages); the site's own pages never count as a
 *    referrer. They travel with every post as fields, so they survive a widget on another domain.
 * 2. Forms: [data-leadbridge-form] is rendered here; form[data-leadbridge] (markup the site wrote
 *    itself, which also works without JavaScript) is enhanced. Posts go with fetch; errors follow
 *    the GOV.UK error summary and error message patterns; numbers use Intl.NumberFormat.
 * 3. Spam guards: GET <form>/token (a 404 is ignored) gives lb_token, the honeypot's name and an
 *    optional ALTCHA challenge, solved here with crypto.subtle.
 * 4. Events: leadbridge:submit, leadbridge:success, leadbridge:error on the widget (bubbling;
 *    detail {form, status}, never personal data), and the same pushed to window.dataLayer.
 * Options (data- attributes on the widget): data-bridge (the bridge's origin, default the
 * script's), data-action, data-locale, data-currency, data-privacy-url, data-disclaimer.
 */
(function () {
  "use strict";
  var KEYS = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id",
    "gclid", "gbraid", "wbraid", "dclid", "fbclid", "msclkid", "ttclid", "li_fat_id", "twclid"];
  var LAST = "lb_attr", FIRST = "lb_attr_first", PAGES = "lb_pages";
  var me = document.currentScript;
  var scriptOrigin = me && me.src ? new URL(me.src, location.href).origin : location.origin;
  var seq = 0;

  /* ---- attribution ---- */

  function cookie(name) {
    var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    if (!m) return "";
    try { return m[1].indexOf("=") < 0 ? decodeURIComponent(m[1]) : m[1]; } catch (e) { return ""; }
  }
  function setCookie(name, value) {
    document.cookie = name + "=" + value + "; path=/; max-age=2592000; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
  }
  function bare(url) { return String(url || "").split("#")[0].split("?")[0]; }
  function external(url) {
    try { return !!url && new URL(url).host !== location.host; } catch (e) { return false; }
  }

  function remember() {
    var q = new URLSearchParams(location.search), touch = new URLSearchParams(), pages;
    KEYS.forEach(function (k) { var v = q.get(k); if (v) touch.set(k, v.slice(0, 200)); });
    if (touch.toString()) {
      setCookie(LAST, touch.toString());
      if (!cookie(FIRST)) setCookie(FIRST, touch.toString());
    }
    pages = new URLSearchParams(cookie(PAGES));
    if (!pages.get("landing_page")) pages.set("landing_page", bare(location.href));
    if (!pages.get("referrer") && external(document.referrer))
      pages.set("referrer", bare(document.referrer));
    setCookie(PAGES, pages.toString());
  }

  /* The attribution fields a post carries (the host page's, whatever the bridge's domain). */
  function attribution() {
    var out = {}, last = new URLSearchParams(cookie(LAST)), pages = new URLSearchParams(cookie(PAGES));
    KEYS.forEach(function (k) { if (last.get(k)) out[k] = last.get(k); });
    if (cookie(FIRST)) out.first_touch = cookie(FIRST);
    out.landing_page = pages.get("landing_page") || bare(location.href);
    out.referrer = pages.get("referrer") || "";
    return out;
  }

  /* ---- the forms we render ---- */

  var PRIVACY = "I agree to the {privacy} and to {agency} contacting me about ";
  var NEWS = "Send me occasional news about property prices near me (optional)";
  var FORMS = {
    valuation: {
      button: "Show my valuation", busy: "Working out your estimate\u2026",
      fields: [
        ["purpose", "I want to", "select", [["sell", "Sell my home"], ["let", "Let my home"]]],
        ["address", "Property address", "text", "street-address", "The first line is enough, for example 12 Example Street"],
        ["postcode", "Postcode", "text", "postal-code", "For example, DE1 1JX", "lb-w10"],
        ["bedrooms", "Bedrooms", "text", "", "", "lb-w5", "numeric"],
        ["property_type", "Property type", "select", ["Detached", "Semi-detached", "Terraced", ["Flat", "Flat or maisonette"]]],
        ["name", "Your full name", "text", "name"],
        ["email", "Email address", "email", "email"],
        ["phone", "Phone number", "tel", "tel"],
        ["consent", PRIVACY + "my valuation", "consent", "Privacy policy"],
        ["marketing", NEWS, "marketing", "News"]
      ]
    },
    contact: {
      button: "Send my enquiry", busy: "Sending\u2026",
      fields: [
        ["name", "Your full name", "text", "name"],
        ["email", "Email address", "email", "email"],
        ["phone", "Phone number", "tel", "tel"],
        ["enquiry", "I am interested in", "select", ["Buying", "Renting", "Selling", "Letting"]],
        ["property", "The property you are asking about", "text"],
        ["property_postcode", "Its postcode", "text", "", "", "lb-w10"],
        ["message", "Your message", "textarea"],
        ["consent", PRIVACY + "this enquiry", "consent", "Privacy policy"],
        ["marketing", NEWS, "marketing", "News"]
      ]
    },
    details: {
      button: "Book my visit", busy: "Booking\u2026",
      fields: [
        ["appointment", "When would suit you for a visit?", "select", ["Weekday morning", "Weekday evening", "Weekend"]],
        ["answers[When are you hoping to move?]", "When are you hoping to move?", "select", ["Within 3 months", "3 to 6 months", "Just curious"]],
        ["message", "Anything we should know? (optional)", "textarea"]
      ]
    }
  };

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; });
  }
  function idFor(w, name) { return w.prefix + "-" + name.replace(/[^A-Za-z0-9_-]+/g, "_").replace(/_+$/, ""); }

  function fieldHtml(w, f) {
    var name = f[0], label = f[1], type = f[2], id = idFor(w, name), hint = "";
    if (type === "consent" || type === "marketing") {
      var c = w.settings.consent;
      if (!c) return "";
      if (type === "marketing" && !c.marketing_field) return "";
      name = type === "consent" ? c.field || "consent" : c.marketing_field;
      id = idFor(w, name);
      label = esc(label).replace("{privacy}", '<a href="' + esc(c.privacy_url) + '">privacy policy</a>')
        .replace("{agency}", esc(w.agency));
      return '<div class="lb-field lb-field--check"><input class="lb-check" type="checkbox" id="' + id +
        '" name="' + esc(name) + '" value="yes" data-lb-short="' + esc(f[3]) + '"><label for="' + id + '">' +
        label + "</label></div>";
    }
    if (f[4]) hint = '<div class="lb-hint" id="' + id + '-hint">' + esc(f[4]) + "</div>";
    var attrs = ' class="lb-input' + (f[5] ? " " + f[5] : "") + '" id="' + id + '" name="' + esc(name) + '"' +
      (hint ? ' aria-describedby="' + id + '-hint"' : "");
    var control;
    if (type === "select") {
      control = "<select" + attrs + ">" + f[3].map(function (o) {
        o = typeof o === "string" ? [o, o] : o;
        return '<option value="' + esc(o[0]) + '">' + esc(o[1]) + "</option>";
      }).join("") + "</select>";
    } else if (type === "textarea") {
      control = "<textarea" + attrs + ' rows="4" maxlength="255"></textarea>';
    } else {
      control = "<input" + attrs + ' type="' + type + '"' + (f[3] ? ' autocomplete="' + f[3] + '"' : "") +
        (f[6] ? ' inputmode="' + f[6] + '"' : "") + (type === "email" ? ' spellcheck="false"' : "") + ">";
    }
    return '<div class="lb-field"><label class="lb-label" for="' + id + '">' + esc(label) + "</label>" + hint + control + "</div>";
  }

  function formHtml(w, kind, action) {
    var def = FORMS[kind];
    return '<form class="lb-form" method="post" novalidate action="' + esc(action) + '" data-leadbridge="' + kind + '">' +
      def.fields.map(function (f) { return fieldHtml(w, f); }).join("") +
      '<button class="lb-button" type="submit">' + def.button + "</button></form>";
  }

  /* ---- answers ---- */

  function emit(w, type, status) {
    var detail = {form: w.name, status: status};
    w.root.dispatchEvent(new CustomEvent("leadbridge:" + type, {bubbles: true, detail: detail}));
    if (Array.isArray(window.dataLayer))
      window.dataLayer.push({event: "leadbridge:" + type, form: w.name, status: status});
  }

  function say(w, text) { w.live.textContent = ""; setTimeout(function () { w.live.textContent = text; }, 50); }

  function money(w, n) {
    try {
      return new Intl.NumberFormat(w.locale, {style: "currency", currency: w.currency,
        maximumFractionDigits: 0, minimumFractionDigits: 0}).format(n);
    } catch (e) { return String(Math.round(n)); }
  }

  var WORDS = {
    rejected: "We could not pass on your details. Please check them and try again, or call us.",
    forbidden: "This form cannot be sent from this page any more. Please reload the page and try again.",
    gone: "This page has been open too long. Please fill in the form again.",
    too_many_requests: "Too many attempts in a short time. Please wait a minute and try again.",
    network: "We could not reach our server. Check your connection and try again: your details are still here.",
    other: "Something went wrong on our side. Your details are still here: please try again in a minute."
  };

  function labelText(input) {
    if (input.getAttribute("data-lb-short")) return input.getAttribute("data-lb-short");
    var l = input.id && input.form.querySelector('label[for="' + input.id + '"]');
    return l ? l.textContent.replace(/\s+/g, " ").trim() : input.name;
  }

  function clearErrors(form, root) {
    var s = root.querySelector(".lb-summary");
    if (s) s.parentNode.removeChild(s);
    Array.prototype.forEach.call(form.querySelectorAll(".lb-error"), function (e) { e.parentNode.removeChild(e); });
    Array.prototype.forEach.call(form.querySelectorAll("[aria-invalid]"), function (i) {
      i.removeAttribute("aria-invalid");
      var d = (i.getAttribute("aria-describedby") || "").split(" ").filter(function (x) { return x && !/-error$/.test(x); });
      if (d.length) i.setAttribute("aria-describedby", d.join(" ")); else i.removeAttribute("aria-describedby");
    });
    Array.prototype.forEach.call(form.querySelectorAll(".lb-field--error"), function (f) { f.classList.remove("lb-field--error"); });
  }

  function showErrors(w, form, items) {
    var box = document.createElement("div"), list = "";
    box.className = "lb-summary";
    box.tabIndex = -1;
    box.id = w.prefix + "-summary";
    box.setAttribute("aria-labelledby", box.id + "-title");
    items.forEach(function (it) {
      var input = it.name && form.elements[it.name];
      if (input && input.length && !input.tagName) input = input[0];
      if (input && input.type !== "hidden") {
        var field = input.closest(".lb-field"), p = document.createElement("p"), eid = input.id + "-error";
        p.className = "lb-error";
        p.id = eid;
        p.innerHTML = '<span class="lb-vh">Error:</span> ';
        p.appendChild(document.createTextNode(it.message.charAt(0).toUpperCase() + it.message.slice(1)));
        field.classList.add("lb-field--error");
        field.insertBefore(p, input.type === "checkbox" ? field.firstChild : input);
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", ((input.getAttribute("aria-describedby") || "") + " " + eid).trim());
        list += '<li><a href="#' + input.id + '">' + esc(labelText(input) + ": " + it.message) + "</a></li>";
      } else {
        list += "<li>" + esc(it.message) + "</li>";
      }
    });
    box.innerHTML = '<h2 class="lb-summary__title" id="' + box.id + '-title">There is a problem</h2><ul class="lb-summary__list">' + list + "</ul>";
    box.addEventListener("click", function (ev) {
      var a = ev.target.closest("a"), input = a && document.getElementById(a.getAttribute("href").slice(1));
      if (!input) return;
      ev.preventDefault();
      input.focus();
      var l = form.querySelector('label[for="' + input.id + '"]');
      if (l) l.scrollIntoView({block: "center"});
    });
    form.parentNode.insertBefore(box, form);
    box.focus();
  }

  function errorItems(status, body) {
    var err = (body && body.error) || {}, map = err.inputs || err.fields, items = [];
    if (err.code === "invalid_fields" && map) {
      Object.keys(map).forEach(function (k) { items.push({name: k, message: String(map[k])}); });
      return items;
    }
    return [{message: WORDS[err.code] || (status === 429 ? WORDS.too_many_requests : WORDS.other)}];
  }

  function numbersHtml(w, title, block) {
    if (!block) return "";
    return '<h3 class="lb-subtitle">' + title + '</h3><dl class="lb-numbers">' +
      [["Low", "min"], ["Typical", "avg"], ["High", "max"]].map(function (k) {
        return "<div" + (k[1] === "avg" ? ' class="lb-typical"' : "") + "><dt>" + k[0] + "</dt><dd>" + esc(money(w, block[k[1]])) + "</dd></div>";
      }).join("") + "</dl>";
  }

  function panel(w, html) {
    var s = document.createElement("section");
    s.className = "lb-panel lb-result";
    s.tabIndex = -1;
    s.innerHTML = html;
    return s;
  }

  function showThanks(w, form, status) {
    var p = panel(w, '<h2 class="lb-title">Thank you</h2><p>' +
      (w.name === "details" || form.getAttribute("data-leadbridge") === "details"
        ? "A valuer will call you to confirm your visit."
        : "We have your enquiry" + (status === "queued" ? " and will pass it on shortly" : "") + ". We will reply within one working day.") + "</p>");
    form.hidden = true;
    form.parentNode.insertBefore(p, form.nextSibling);
    p.focus();
  }

  function showResult(w, form, body) {
    var v = body.valuation || {}, ref = body.lead && body.lead.ref, values = new FormData(form), html;
    var where = [values.get("address"), values.get("postcode")].filter(Boolean).join(", ");
    html = '<h2 class="lb-title" id="' + w.prefix + '-result-title">Your estimate</h2>' +
      (where ? '<p class="lb-for">For ' + esc(where) + "</p>" : "") +
      numbersHtml(w, "If you sell", v.sale) + numbersHtml(w, "If you let (per month)", v.rent);
    if (v.sale || v.rent) html += '<p class="lb-disclaimer">' + esc(w.disclaimer) + "</p>";
    else html += '<p class="lb-notice">' + (body.status === "queued"
      ? "We have your details. Our valuation service is busy right now, so an agent will send your estimate shortly."
      : "We could not make an instant estimate for this property. An agent will call you with one.") + "</p>";
    html += '<p><button type="button" class="lb-button lb-button--link" data-lb-edit>Change the property details</button></p>' +
      '<h3 class="lb-subtitle">Book a free visit</h3>' +
      (ref ? "<p>A local valuer will confirm the figure and answer your questions.</p>" +
        formHtml({prefix: w.prefix + "-details", settings: {}}, "details", w.detailsAction)
        : "<p>We will call you to arrange a visit.</p>");
    var p = panel(w, html);
    p.setAttribute("aria-labelledby", w.prefix + "-result-title");
    p.className = "lb-result";
    form.hidden = true;
    form.parentNode.insertBefore(p, form.nextSibling);
    p.querySelector("[data-lb-edit]").addEventListener("click", function () {
      p.parentNode.removeChild(p);
      form.hidden = false;
      form.elements[0].focus();
    });
    var step2 = p.querySelector("form");
    if (step2) {
      var hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "lb_ref";
      hidden.value = ref;
      step2.appendChild(hidden);
      enhance({root: w.root, name: "details", prefix: w.prefix + "-details", live: w.live, locale: w.locale,
        currency: w.currency, settings: {}, bridge: w.bridge, token: w.detailsToken}, step2, "details");
    }
    p.focus();
  }

  /* ---- spam guards (issue 11's contract) ---- */

  function hexOf(buf) {
    return Array.prototype.map.call(new Uint8Array(buf), function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }
  function solve(c) {
    var n = 0, max = c.maxnumber || 1000000, enc = new TextEncoder();
    if (!window.crypto || !crypto.subtle) return Promise.resolve(null);
    function batch() {
      var start = n, list = [];
      for (; n <= max && n < start + 200; n++) list.push(crypto.subtle.digest("SHA-256", enc.encode(c.salt + n)));
      return Promise.all(list).then(function (hashes) {
        for (var i = 0; i < hashes.length; i++)
          if (hexOf(hashes[i]) === c.challenge)
            return btoa(JSON.stringify({algorithm: c.algorithm, challenge: c.challenge, number: start + i,
              salt: c.salt, signature: c.signature}));
        return n > max ? null : batch();
      });
    }
    return batch();
  }

  function hidden(form, name, value) {
    var i = form.querySelector('input[type=hidden][name="' + name + '"]');
    if (!i) {
      i = document.createElement("input");
      i.type = "hidden";
      i.name = name;
      form.appendChild(i);
    }
    i.value = value;
  }

  function token(action) {
    return fetch(action + "/token", {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .catch(function () { return null; });
  }

  /* pre: a token fetched earlier (step 2's comes with the page, so the form token's time trap
   * counts the time spent on step 1: a visitor who books the visit a second after the result
   * appears is no bot). */
  function guard(w, form, action, pre) {
    var hp = document.createElement("div"), id = w.prefix + "-hp";
    hp.className = "lb-hp";
    hp.setAttribute("aria-hidden", "true");
    hp.innerHTML = '<label for="' + id + '">Leave this empty</label><input id="' + id + '" type="text" name="' +
      esc(w.root.getAttribute("data-honeypot") || "lb_website") + '" tabindex="-1" autocomplete="off">';
    if (!form.querySelector(".lb-hp")) form.appendChild(hp);
    return (pre || token(action))
      .then(function (t) {
        if (!t) return null;
        if (t.token) hidden(form, "lb_token", t.token);
        if (t.honeypot) form.querySelector(".lb-hp input").name = t.honeypot;
        return t.challenge ? solve(t.challenge).then(function (a) { if (a) hidden(form, "altcha", a); }) : null;
      })
      .catch(function () { return null; });
  }

  /* ---- posting ---- */

  function enhance(w, form, kind) {
    var button = form.querySelector("[type=submit]"), busy = false, ready;
    var def = FORMS[kind] || FORMS.contact, idle = button ? button.textContent : "";
    form.noValidate = true;
    ready = guard(w, form, form.action, w.token);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (busy) return;
      busy = true;
      clearErrors(form, form.parentNode);
      if (button) {
        button.setAttribute("aria-busy", "true");
        button.textContent = def.busy;
      }
      form.setAttribute("aria-busy", "true");
      say(w, def.busy);
      emit(w, "submit", "sending");
      var data = new URLSearchParams(new FormData(form)), extra = kind === "details" ? {} : attribution();
      Object.keys(extra).forEach(function (k) { if (!data.has(k)) data.set(k, extra[k]); });
      function done() {
        busy = false;
        form.removeAttribute("aria-busy");
        if (button) {
          button.removeAttribute("aria-busy");
          button.textContent = idle;
        }
      }
      ready.then(function () {
        return fetch(form.action, {method: "POST", body: data, credentials: "same-origin",
          headers: {Accept: "application/json"}});
      }).then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) { return {status: res.status, body: body}; });
      }).then(function (r) {
        done();
        if (r.status >= 400) {
          showErrors(w, form, errorItems(r.status, r.body));
          say(w, "There is a problem: see the list at the top of the form.");
          emit(w, "error", r.status);
          return;
        }
        emit(w, "success", r.body.status || r.status);
        ready = guard(w, form, form.action);   /* a token is used once: one for a second go */
        if (kind === "valuation") showResult(w, form, r.body);
        else showThanks(w, form, r.body.status);
        say(w, kind === "valuation" ? "Your estimate is ready." : "Thank you: your details were sent.");
      }).catch(function () {
        done();
        showErrors(w, form, [{message: WORDS.network}]);
        say(w, WORDS.network);
        emit(w, "error", "network");
      });
    });
  }

  function widget(root, kind) {
    var bridge = (root.getAttribute("data-bridge") || scriptOrigin).replace(/\/+$/, "");
    var action = root.getAttribute("data-action") || bridge + "/lead/" + kind;
    var w = {root: root, name: kind, bridge: bridge, prefix: "lb-" + kind + (seq++ ? "-" + seq : ""),
      agency: root.getAttribute("data-agency") || "Example Estates", detailsAction: action + "/details"};
    if (!root.classList.contains("lb")) root.classList.add("lb");
    w.live = document.createElement("div");
    w.live.className = "lb-vh";
    w.live.setAttribute("aria-live", "polite");
    root.appendChild(w.live);
    return fetch(action + "/settings", {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { return r.ok ? r.json() : {}; })
      .catch(function () { return {}; })
      .then(function (s) {
        var p = root.getAttribute("data-privacy-url");
        if (p) s.consent = Object.assign({field: "consent"}, s.consent || {}, {privacy_url: p});
        w.settings = s;
        w.locale = root.getAttribute("data-locale") || s.locale || "en-GB";
        w.currency = root.getAttribute("data-currency") || s.currency || "GBP";
        w.disclaimer = root.getAttribute("data-disclaimer") || s.disclaimer ||
          "This is an automated estimate, not a formal valuation.";
        if (kind === "valuation") w.detailsToken = token(w.detailsAction);
        return {w: w, action: action};
      });
  }

  /* The stylesheet next to the script (../css/leadbridge.css), unless the page links it. */
  function styles() {
    if (!me || !me.src || document.querySelector('link[href*="leadbridge.css"]')) return;
    var l = document.createElement("link");
    l.rel = "stylesheet";
    l.href = new URL("../css/leadbridge.css", me.src).href;
    document.head.appendChild(l);
  }

  function start() {
    remember();
    styles();
    Array.prototype.forEach.call(document.querySelectorAll("[data-leadbridge-form]"), function (root) {
      var kind = root.getAttribute("data-leadbridge-form");
      if (!FORMS[kind]) return;
      widget(root, kind).then(function (x) {
        var holder = document.createElement("div");
        holder.innerHTML = formHtml(x.w, kind, x.action);
        var noscript = root.querySelector("noscript");
        if (noscript) root.removeChild(noscript);
        root.appendChild(holder.firstChild);
        enhance(x.w, root.querySelector("form"), kind);
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("form[data-leadbridge]"), function (form) {
      if (form.closest("[data-leadbridge-form]")) return;
      var kind = form.getAttribute("data-leadbridge") || "contact";
      var root = form.closest("[data-leadbridge-root]") || form.parentNode;
      root.setAttribute("data-action", form.action);
      widget(root, kind).then(function (x) {
        if (x.w.prefix !== "lb-" + kind) x.w.prefix = "lb-" + kind;
        enhance(x.w, form, kind);
        var s = root.querySelector(".lb-summary");
        if (s) s.focus();
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
