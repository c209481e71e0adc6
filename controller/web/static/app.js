// polyfleet dashboard: what JavaScript adds to pages that work without it.
// - live regions (htmx polling) pause while the page is hidden, the user is typing or
//   selecting text, or has started to fill in a form, so updates never take work away;
// - a banner says when the controller cannot be reached, and goes once it answers again;
// - a standby controller's answer sends the browser to the active one;
// - forms (or their buttons) marked data-confirm ask first (without JavaScript the server asks
//   instead).
(function () {
  "use strict";

  // A standby controller names the active one here (and answers 503).
  var ACTIVE_HEADER = "Polyfleet-Active-Controller";
  var lastGood = new Date();

  function banner() {
    return document.getElementById("banner");
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function showBanner(kind, status) {
    var el = banner();
    if (!el) return;
    var text = el.getAttribute(kind === "error" ? "data-error" : "data-unreachable") || "";
    el.textContent = text.replace("{time}", clock(lastGood)).replace("{status}", String(status || ""));
    el.hidden = false;
  }

  function hideBanner() {
    var el = banner();
    if (el) el.hidden = true;
  }

  // A form the user has started to fill in (a file chosen, a box ticked) must survive:
  // the region is not refreshed again until the page is left.
  document.addEventListener("input", markEdited, true);
  document.addEventListener("change", markEdited, true);

  function markEdited(event) {
    var target = event.target;
    var region = target && target.closest && target.closest("[data-live]");
    if (region && target.closest("form")) region.setAttribute("data-edited", "1");
  }

  function userIsBusy(region) {
    if (document.hidden) return true;
    if (region.hasAttribute("data-edited")) return true;
    var active = document.activeElement;
    if (active && region.contains(active)) {
      var tag = active.tagName;
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || active.isContentEditable) {
        return true;
      }
    }
    var selection = window.getSelection && window.getSelection();
    if (selection && !selection.isCollapsed && region.contains(selection.anchorNode)) return true;
    if (region.querySelector("details[open][data-keep-open]")) return true;
    return false;
  }

  function followActive(xhr) {
    var active = xhr && xhr.getResponseHeader && xhr.getResponseHeader(ACTIVE_HEADER);
    if (!active) return false;
    try {
      var target = new URL(window.location.pathname + window.location.search, active);
      if (target.origin !== window.location.origin) {
        window.location.assign(target.href);
        return true;
      }
    } catch (e) {
      return false;
    }
    return false;
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var region = event.detail && event.detail.elt;
    if (region && region.hasAttribute("data-live") && userIsBusy(region)) {
      event.preventDefault();
    }
  });

  // An answer that left before the user started editing must not land over the edit.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var region = event.detail && event.detail.target;
    if (region && region.hasAttribute && region.hasAttribute("data-edited")) {
      event.detail.shouldSwap = false;
    }
  });

  // A keyboard user keeps their place: the link or button focused in a region that is
  // refreshed is focused again in the new content (the same address and words, else the
  // one at the same position), instead of focus falling back to the page's start.
  var FOCUSABLE = "a[href], button, input, select, textarea, summary, [tabindex]";
  var refocus = null;

  document.addEventListener("htmx:beforeSwap", function (event) {
    var region = event.detail && event.detail.target;
    var active = document.activeElement;
    refocus = null;
    if (!region || !region.id || !active || active === document.body) return;
    if (!region.contains(active)) return;
    var all = Array.prototype.slice.call(region.querySelectorAll(FOCUSABLE));
    refocus = {
      id: region.id,
      index: all.indexOf(active),
      href: active.getAttribute("href"),
      text: active.textContent,
    };
  });

  document.addEventListener("htmx:afterSettle", function () {
    if (!refocus) return;
    var wanted = refocus;
    refocus = null;
    var region = document.getElementById(wanted.id);
    if (!region) return;
    var all = Array.prototype.slice.call(region.querySelectorAll(FOCUSABLE));
    var same = all.filter(function (el) {
      return el.getAttribute("href") === wanted.href && el.textContent === wanted.text;
    });
    var target = same[0] || all[wanted.index];
    if (target) target.focus({ preventScroll: true });
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var xhr = event.detail && event.detail.xhr;
    if (!xhr) return;
    if (xhr.status >= 200 && xhr.status < 400) {
      lastGood = new Date();
      hideBanner();
    }
  });

  document.addEventListener("htmx:sendError", function () {
    showBanner("unreachable");
  });

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail && event.detail.xhr;
    if (xhr && xhr.status === 503 && followActive(xhr)) return;
    showBanner("error", xhr ? xhr.status : "");
  });

  document.addEventListener("htmx:timeout", function () {
    showBanner("unreachable");
  });

  // Forms that change something important ask for confirmation; the answer travels with the
  // form, so the server does not ask again.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    var submitter = event.submitter;
    var question =
      (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (!question) return;
    if (!window.confirm(question)) {
      event.preventDefault();
      return;
    }
    var confirmed = form.querySelector("input[name=confirmed]");
    if (!confirmed) {
      confirmed = document.createElement("input");
      confirmed.type = "hidden";
      confirmed.name = "confirmed";
      form.appendChild(confirmed);
    }
    confirmed.value = "1";
  });

  // "/" jumps to the page's search field, as in most admin tools.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    var tag = document.activeElement && document.activeElement.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    var search = document.querySelector("input[type=search]");
    if (search) {
      event.preventDefault();
      search.focus();
    }
  });

  // htmx timeouts are off by default; a live request that hangs counts as unreachable.
  document.addEventListener("DOMContentLoaded", function () {
    if (window.htmx && window.htmx.config) window.htmx.config.timeout = 20000;
  });
})();
