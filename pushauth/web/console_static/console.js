// The console's scripts: sign-in (with the person's phone, or an admin token), the live alert feed
// (server-sent events from /console/events, put into the open list without a reload), times in the
// viewer's own zone, and confirmation before the actions that cut a user off. Elements are built with
// textContent only: user names come from attackers.
"use strict";

// Times: the markup carries UTC (datetime and title, so hovering shows it); the text becomes local time.
function localTimes(root) {
  const format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    timeZoneName: "short",
  });
  root.querySelectorAll("time[datetime]").forEach(function (node) {
    const at = new Date(node.getAttribute("datetime"));
    if (!isNaN(at.getTime())) {
      node.textContent = format.format(at);
      node.title = "UTC " + node.getAttribute("datetime");
    }
  });
}
localTimes(document);

// On a phone a wide table becomes one card per row (console.css): each cell is labelled with its column's
// heading, copied here from the table's own header so the markup stays one table for every width.
document.querySelectorAll("main table").forEach(function (table) {
  const heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
    return th.textContent;
  });
  table.querySelectorAll("tbody tr").forEach(function (row) {
    Array.prototype.forEach.call(row.children, function (cell, i) {
      if (heads[i]) {
        cell.setAttribute("data-label", heads[i]);
      }
    });
  });
  table.classList.add("cards");
});

// Lock and revoke cut a user off: ask first. A form with data-confirm submits only when confirmed.
document.querySelectorAll("form[data-confirm]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (!window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });
});

// Sign-in with the person's phone: a prompt with number matching, then wait for the answer.
(function () {
  const form = document.getElementById("push-form");
  if (!form) {
    return;
  }
  const error = document.getElementById("login-error");
  const wait = document.getElementById("push-wait");
  const number = document.getElementById("push-number");
  const status = document.getElementById("push-status");

  function refuse(text) {
    error.textContent = text;
    error.hidden = false;
    wait.hidden = true;
    form.hidden = false;
  }

  async function answer() {
    for (;;) {
      let response;
      try {
        response = await fetch("/console/login/push/wait", {method: "POST", credentials: "same-origin"});
      } catch (e) {
        await new Promise(function (done) { setTimeout(done, 1000); });
        continue;
      }
      if (response.status === 202) {
        continue;
      }
      if (response.ok) {
        status.textContent = "Approved";
        window.location.assign("/console");
        return;
      }
      let body = {};
      try {
        body = await response.json();
      } catch (e) {
        body = {};
      }
      refuse(body.status === "denied" ? "Refused: the sign-in was denied on the phone." :
             body.status === "expired" ? "The prompt expired. Send another." :
             "Could not sign in (" + (body.message || response.status) + ").");
      return;
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    error.hidden = true;
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({user: form.elements.user.value}),
      });
    } catch (e) {
      refuse("Could not sign in: the server did not answer.");
      return;
    }
    let body = {};
    try {
      body = await response.json();
    } catch (e) {
      body = {};
    }
    if (response.status !== 201) {
      refuse(body.message || ("Could not sign in (" + response.status + ")."));
      return;
    }
    number.textContent = body.number || "";
    form.hidden = true;
    wait.hidden = false;
    answer();
  });
})();

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
  if (!feed || !("EventSource" in window) || feed.getAttribute("data-live") !== "1") {
    return;
  }
  const RANK = {info: 0, low: 1, medium: 2, high: 3, critical: 4};
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

  // The same markup as the server's (console/html/alerts.py's feed_item).
  function item(alert) {
    const li = el("li", "alert sev-" + alert.severity + " new");
    li.id = "alert-" + alert.id;
    li.setAttribute("data-version", String(alert.version));
    li.setAttribute("data-severity", alert.severity);
    const link = el("a");
    link.href = "/console/alerts/" + encodeURIComponent(alert.id);
    const when = el("time", null, alert.updated_at);
    when.setAttribute("datetime", alert.updated_at);
    const meta = el("span", "meta");
    meta.append(el("span", "kind", alert.kind), " ",
                el("span", "count", alert.event_count === 1 ? "1 event" : alert.event_count + " events"), " ",
                when);
    if (alert.version > 1) {
      meta.append(" ", el("span", "escalated", "ESCALATED"));
    }
    link.append(el("span", "badge sev-" + alert.severity, String(alert.severity).toUpperCase()), " ",
                el("span", "title", alert.title), " ", meta);
    li.append(link);
    localTimes(li);
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
      // Most severe first, newest first within a severity: before the first item it outranks or equals.
      const rank = RANK[alert.severity] || 0;
      const after = Array.prototype.find.call(feed.children, function (li) {
        return (RANK[li.getAttribute("data-severity")] || 0) <= rank;
      });
      feed.insertBefore(item(alert), after || null);
    }
    showEmpty();
  });
})();
