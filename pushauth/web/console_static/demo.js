// The sample login page: ask the page's server for a prompt, show the number, wait for the answer.
// It talks only to its own server (/demo/...); the API key stays there.
"use strict";

(function () {
  const form = document.getElementById("demo-form");
  if (!form) {
    return;
  }
  const prompt = document.getElementById("demo-prompt");
  const number = document.getElementById("demo-number");
  const result = document.getElementById("demo-result");
  const button = form.querySelector("button");
  const csrf = form.getAttribute("data-csrf");
  const wait = Number(form.getAttribute("data-wait")) || 0;
  const words = {approved: "Approved", denied: "Denied", expired: "Expired: nobody answered",
                 cancelled: "Cancelled"};

  function show(text, kind) {
    result.textContent = text;
    result.className = "result" + (kind ? " " + kind : "");
  }

  async function call(url, options) {
    const response = await fetch(url, Object.assign({credentials: "same-origin"}, options));
    let body = {};
    try {
      body = await response.json();
    } catch (e) {
      body = {message: "unexpected answer from the server"};
    }
    if (!response.ok) {
      throw new Error(body.message || "sign-in refused");
    }
    return body;
  }

  async function signIn(user) {
    const created = await call("/demo/challenges", {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({user: user}),
    });
    if (created.status === "allowed") {
      show("Signed in without a prompt (" + created.reason + ")", "good");
      return;
    }
    number.textContent = created.number || "(no number: just approve)";
    prompt.hidden = false;
    show("Waiting for your phone…");
    for (;;) {
      const seen = await call("/demo/challenges/" + encodeURIComponent(created.id) + "?wait=" + wait);
      if (seen.status === "pending" && !wait) {
        await new Promise(function (resolve) { setTimeout(resolve, 1000); });
      } else if (seen.status !== "pending") {
        show((words[seen.status] || seen.status) + (seen.reason ? " (" + seen.reason + ")" : ""),
             seen.status === "approved" ? "good" : "bad");
        return;
      }
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    prompt.hidden = true;
    show("Asking your phone…");
    signIn(form.elements.user.value).catch(function (error) {
      prompt.hidden = true;
      show(error.message, "bad");
    }).finally(function () {
      button.disabled = false;
    });
  });
})();
