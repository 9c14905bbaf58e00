// The console's scripts: sign-in, and the live alert feed (server-sent events from /console/events,
// put into the open list without a reload). Elements are built with textContent only: user names come
// from attackers.
"use strict";

// Sign-in: the token goes as the admin API takes it, `Authorization: Bearer`, never in a form body.
(function () {
  const form = document.getElementById("login-form");
  if (!form) {
    return;
  }
  const error = document.getElementById("login-error");

  function refuse(text) {
    error.textContent = text;
    error.hidden = false;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Authorization": "Bearer " + form.elements.token.value.trim()},
      });
    } catch (e) {
      refuse("Could not sign in: the server did not answer, or the token has characters no token has.");
      return;
    }
    if (response.ok) {
      window.location.assign("/console");
    } else if (response.status === 401) {
      refuse("That is not an admin token of this server.");
    } else {
      refuse("Could not sign in (" + response.status + ").");
    }
  });
})();

(function () {
  const feed = document.getElementById("feed");
  if (!feed || !("EventSource" in window)) {
    return;
  }
  const status = document.getElementById("feed-status");
  const empty = document.getElementById("feed-empty");

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = String(text);
    }
    return node;
  }

  // The same markup as the server's (console_html.feed_item).
  function item(alert) {
    const li = el("li", "alert sev-" + alert.severity + " new");
    li.id = "alert-" + alert.id;
    li.setAttribute("data-version", String(alert.version));
    const link = el("a");
    link.href = "/console/alerts/" + encodeURIComponent(alert.id);
    const when = el("time", null, alert.updated_at);
    when.setAttribute("datetime", alert.updated_at);
    link.append(el("span", "badge sev-" + alert.severity, String(alert.severity).toUpperCase()), " ",
                el("span", "kind", alert.kind), " ", el("span", "user", alert.user), " ",
                el("span", "count", alert.event_count + " event(s)"), " ", when);
    if (alert.version > 1) {
      link.append(" ", el("span", "escalated", "ESCALATED"));
    }
    li.append(link);
    return li;
  }

  function showEmpty() {
    if (empty) {
      empty.hidden = feed.children.length > 0;
    }
  }

  const source = new EventSource(feed.getAttribute("data-events"));
  source.addEventListener("open", function () {
    say("Live: new alerts and escalations appear here as they are raised.");
  });
  source.addEventListener("error", function () {
    say("Live updates interrupted; reconnecting…");
  });
  source.addEventListener("reload", function () {
    window.location.reload();
  });
  source.addEventListener("alert", function (event) {
    let alert;
    try {
      alert = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    const old = document.getElementById("alert-" + alert.id);
    if (old) {
      if (Number(old.getAttribute("data-version")) > alert.version) {
        return;
      }
      old.remove();
    }
    if (alert.status === "open") {
      feed.insertBefore(item(alert), feed.firstChild);
    }
    showEmpty();
  });
})();
