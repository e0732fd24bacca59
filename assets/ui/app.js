// publishd's dashboard: the few things HTML alone cannot do. Pages are
// served whole; this script keeps an API token in session storage and
// fetches pages with it, refreshes the jobs page, follows a job's events
// (steps and push progress, live) and cancels jobs through the API.
"use strict";
(function () {
  const TOKEN = "publishd-token";
  const token = () => sessionStorage.getItem(TOKEN);
  const authorized = (headers) => {
    const value = token();
    if (value) headers.Authorization = "Bearer " + value;
    return headers;
  };
  const announce = (text) => {
    const region = document.getElementById("announce");
    if (region) region.textContent = text;
  };

  // Fetches a page and puts its content in place of this one's.
  let loading = null;
  let latest = 0;
  async function load(url, push, refresh = false) {
    const mine = ++latest;
    const response = await fetch(url, { headers: authorized({ Accept: "text/html" }) });
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const main = page.querySelector("main");
    // A page asked for later (a link followed while a refresh was on its
    // way) is the one to show.
    if (!main || mine !== latest) return;
    document.title = page.title;
    // A refresh keeps the filter form as it stands: what someone has chosen
    // in it but not yet applied is theirs, not the server's.
    const filters = document.querySelector("main form.filters");
    const fresh = main.querySelector("form.filters");
    if (refresh && filters && fresh) fresh.replaceWith(filters);
    document.querySelector("main").replaceWith(main);
    if (push) {
      history.pushState({}, "", url);
      main.focus();
    }
    enhance();
  }
  function reload() {
    if (!loading) loading = load(location.href, false, true).finally(() => { loading = null; });
    return loading;
  }
  window.addEventListener("popstate", () => load(location.href, false));

  // With a token, links and the filter form are followed with it.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='/ui/']");
    if (!link || !token() || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    load(link.getAttribute("href"), true);
  });
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.id === "sign-in") {
      event.preventDefault();
      sessionStorage.setItem(TOKEN, form.token.value.trim());
      signIn();
    } else if (form.method === "get" && token()) {
      event.preventDefault();
      const query = new URLSearchParams(new FormData(form)).toString();
      load(form.getAttribute("action") + "?" + query, true);
    }
  });

  async function signIn() {
    await load(location.href, false);
    if (document.querySelector("main[data-sign-in]")) {
      sessionStorage.removeItem(TOKEN);
      const error = document.getElementById("sign-in-error");
      if (error) error.textContent = "That token was not accepted.";
    }
  }

  // Times: relative, with the absolute one in the title.
  function times() {
    const now = Date.now();
    for (const element of document.querySelectorAll("time[datetime]")) {
      const at = Date.parse(element.getAttribute("datetime"));
      if (Number.isNaN(at)) continue;
      element.title = element.title || element.textContent;
      const seconds = Math.round((now - at) / 1000);
      const units = [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]];
      const [size, unit] = units.find(([size]) => Math.abs(seconds) >= size) || [1, "second"];
      const count = Math.round(seconds / size);
      element.textContent = count === 0 ? "just now" : count + " " + unit + (count === 1 ? "" : "s") + " ago";
    }
  }

  // The latest progress of each pushing target, put back after a reload.
  const progress = new Map();
  function showProgress(target) {
    const update = progress.get(target);
    const bar = document.getElementById("progress-" + target);
    const text = document.getElementById("progress-text-" + target);
    if (!update || !bar) return;
    bar.max = update.bytes_total || 1;
    bar.value = update.bytes_done;
    const percent = update.bytes_total ? Math.floor((100 * update.bytes_done) / update.bytes_total) : 0;
    const mib = (bytes) => (bytes / 1048576).toFixed(1);
    if (text) text.textContent = percent + "% (" + mib(update.bytes_done) + " of " + mib(update.bytes_total) + " MiB)";
  }

  // A job's events, read as a stream (EventSource cannot send a token),
  // resumed from the last event's id when it breaks, or when the service
  // ends it after a while (a "reopen" event).
  let following = null;
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function follow(job, after) {
    if (following === job) return;
    following = job;
    // The page already shows everything up to its last event.
    let last = after || "";
    while (following === job) {
      try {
        const headers = authorized({ Accept: "text/event-stream" });
        if (last) headers["Last-Event-ID"] = last;
        const response = await fetch("/api/v1/jobs/" + job + "/events", { headers });
        // Too many streams open with this token: wait for one to close.
        if (response.status === 429) {
          await pause(5000);
          continue;
        }
        if (!response.ok) return;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        let reopen = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = { type: "message", data: "" };
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event.type = line.slice(6).trim();
              else if (line.startsWith("id:")) last = line.slice(3).trim();
              else if (line.startsWith("data:")) event.data += line.slice(5).trim();
            }
            if (event.type === "reopen") reopen = true;
            if (!event.data || following !== job || reopen) continue;
            const data = JSON.parse(event.data);
            if (event.type === "progress") {
              progress.set(data.target, data);
              showProgress(data.target);
            } else {
              reload();
            }
          }
        }
        if (reopen) continue;
        // The stream ends after the job's last event.
        await reload();
        return;
      } catch (error) {
        await pause(1000);
      }
    }
  }

  let refreshing = null;
  function enhance() {
    times();
    const main = document.querySelector("main");
    const signOut = document.getElementById("sign-out");
    if (signOut) signOut.hidden = !token();
    if (main.hasAttribute("data-sign-in") && token()) {
      signIn();
      return;
    }
    clearInterval(refreshing);
    const every = Number(main.dataset.refresh);
    if (every) {
      refreshing = setInterval(() => {
        // Not while someone is choosing a filter.
        if (!document.activeElement || !document.activeElement.closest("form")) reload();
      }, every);
    }
    if (main.dataset.job) {
      for (const target of progress.keys()) showProgress(target);
      follow(main.dataset.job, main.dataset.lastEvent);
    } else {
      following = null;
    }
    const focus = document.getElementById("token");
    if (focus) focus.focus();
  }

  document.addEventListener("click", async (event) => {
    const copy = event.target.closest("button[data-copy]");
    if (copy) {
      try {
        await navigator.clipboard.writeText(copy.dataset.copy);
        announce("Digest copied.");
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents(copy.previousElementSibling || copy);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        announce("Digest selected; copy it with Ctrl+C.");
      }
      return;
    }
    const cancel = event.target.closest("button[data-cancel]");
    if (cancel) {
      cancel.disabled = true;
      const response = await fetch("/api/v1/jobs/" + cancel.dataset.cancel + "/cancel", {
        method: "POST",
        headers: authorized({}),
      });
      if (response.ok) {
        announce("Cancel requested.");
      } else {
        const body = await response.json().catch(() => ({}));
        announce("Could not cancel: " + ((body.error && body.error.message) || response.status));
        cancel.disabled = false;
      }
      reload();
      return;
    }
    if (event.target.id === "sign-out") {
      sessionStorage.removeItem(TOKEN);
      location.reload();
    }
  });

  enhance();
})();
