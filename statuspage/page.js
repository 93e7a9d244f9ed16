"use strict";
// The status page script. It polls the JSON snapshot next to the page and
// renders it with DOM methods only. Every string from the server becomes a
// text node, so node names and error messages cannot inject markup.
(function () {
  const refreshMs = 3000;
  const timeoutMs = 5000;
  const tokenKey = "llmproxy.adminToken";
  const classOrder = ["priority", "standard", "batch"];

  // The snapshot lives at <page path>/status, which keeps working when a
  // reverse proxy serves the page under a path prefix.
  const statusURL = location.pathname.replace(/\/?$/, "/") + "status";
  const $ = (id) => document.getElementById(id);

  let lastSuccess = null;
  let timer = null;

  // takeTokenFromFragment moves a token given as /admin#token=... into
  // session storage, and removes it from the address bar and history.
  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (token === null) {
      return;
    }
    sessionStorage.setItem(tokenKey, token);
    history.replaceState(null, "", location.pathname + location.search);
  }

  // el creates an element with the given class and children. Strings and
  // numbers become text nodes.
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    for (const child of children) {
      if (child === null || child === undefined) {
        continue;
      }
      node.append(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function text(id, value) {
    $(id).textContent = String(value);
  }

  function str(v) {
    return typeof v === "string" ? v : "";
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : 0;
  }

  function formatDuration(seconds) {
    let s = Math.floor(num(seconds));
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + s + "s";
    return s + "s";
  }

  function formatTime(value) {
    const t = new Date(str(value));
    if (isNaN(t.getTime())) {
      return "";
    }
    const sameDay = t.toDateString() === new Date().toDateString();
    return sameDay ? t.toLocaleTimeString() : t.toLocaleString();
  }

  // Badge classes come from fixed lists, never from server text.
  function stateClass(state) {
    return { up: "good", down: "bad", ejected: "bad", restricted: "warn", draining: "warn" }[state] || "neutral";
  }

  function breakerClass(breaker) {
    if (breaker.includes("passive out")) return "bad";
    if (breaker.startsWith("closed")) return "good";
    if (breaker.startsWith("half")) return "warn";
    if (breaker.startsWith("open")) return "bad";
    return "neutral";
  }

  function statusClass(status) {
    if (status >= 500) return "bad";
    if (status >= 400) return "warn";
    return "neutral";
  }

  function loadCell(inflight, max) {
    const cell = el("td", "load", max > 0 ? inflight + " / " + max : String(inflight));
    const bar = el("div", "bar");
    const fill = el("div", "");
    const ratio = max > 0 ? Math.min(inflight / max, 1) : 0;
    fill.style.width = (ratio * 100).toFixed(0) + "%";
    if (ratio >= 1) {
      bar.classList.add("full");
    }
    bar.append(fill);
    cell.append(bar);
    return cell;
  }

  function modelsCell(models) {
    const cell = el("td", "models");
    if (!Array.isArray(models) || models.length === 0) {
      cell.append(el("span", "none", "none"));
      return cell;
    }
    for (const m of models) {
      cell.append(el("span", "chip", str(m)));
    }
    return cell;
  }

  function nodeRow(n) {
    const state = str(n.state);
    const breaker = str(n.breaker);
    const tps = num(n.tokens_per_second);
    const row = el("tr", "node",
      el("td", "", el("div", "node-name", str(n.name)), el("div", "node-url", str(n.url))),
      el("td", "state", el("span", "badge " + stateClass(state), state || "unknown")),
      el("td", "breaker", el("span", "badge " + breakerClass(breaker), breaker || "unknown")),
      loadCell(num(n.inflight), num(n.max_concurrent)),
      modelsCell(n.loaded_models),
      el("td", "num tps", tps > 0 ? tps.toFixed(1) : "–"),
      el("td", "error-text last-error", str(n.last_error)));
    row.dataset.node = str(n.name);
    row.dataset.state = state;
    return row;
  }

  function renderNodes(nodes) {
    const rows = nodes.map(nodeRow);
    if (rows.length === 0) {
      const cell = el("td", "empty", "No nodes configured.");
      cell.colSpan = 7;
      rows.push(el("tr", "", cell));
    }
    $("nodes-body").replaceChildren(...rows);

    const up = nodes.filter((n) => n.state === "up").length;
    text("nodes-up", up + " / " + nodes.length);
    let inflight = 0;
    let capacity = 0;
    for (const n of nodes) {
      inflight += num(n.inflight);
      capacity += num(n.max_concurrent);
    }
    text("inflight-total", capacity > 0 ? inflight + " / " + capacity : String(inflight));
  }

  function renderQueue(depth) {
    const classes = classOrder.concat(Object.keys(depth).filter((c) => !classOrder.includes(c)).sort());
    let total = 0;
    const cards = classes.map((c) => {
      const n = num(depth[c]);
      total += n;
      const value = el("div", "value", n);
      const card = el("div", "card queue-class", el("div", "label", c), value);
      card.dataset.class = c;
      return card;
    });
    $("queue-body").replaceChildren(...cards);
    text("queued-total", total);
  }

  function renderCache(cache) {
    const hits = num(cache.hits);
    const misses = num(cache.misses);
    text("cache-rate", hits + misses > 0 ? (num(cache.hit_rate) * 100).toFixed(1) + "%" : "–");
    text("cache-hits", hits);
    text("cache-misses", misses);
  }

  // renderRedis shows the shared Redis, or hides the card when the proxy
  // uses none.
  function renderRedis(redis) {
    $("redis-card").hidden = redis === null;
    if (redis === null) {
      return;
    }
    text("redis-state", redis.up === true ? "up" : "down");
    const degraded = Array.isArray(redis.degraded) ? redis.degraded.map(str) : [];
    text("redis-degraded", degraded.join("; "));
  }

  function errorRow(e) {
    const status = num(e.status);
    const row = el("tr", "recent-error",
      el("td", "nowrap", formatTime(e.time)),
      el("td", "", el("span", "badge " + statusClass(status), status || "–")),
      el("td", "mono", str(e.route)),
      el("td", "mono", str(e.model)),
      el("td", "", str(e.node)),
      el("td", "mono", str(e.request_id)),
      el("td", "error-text", str(e.error)));
    return row;
  }

  function renderErrors(errors) {
    const rows = errors.map(errorRow);
    if (rows.length === 0) {
      const cell = el("td", "empty", "No errors recorded.");
      cell.colSpan = 7;
      rows.push(el("tr", "", cell));
    }
    $("errors-body").replaceChildren(...rows);
  }

  function render(s) {
    text("version", "version " + (str(s.version) || "unknown"));
    text("uptime", formatDuration(s.uptime_seconds));
    renderNodes(Array.isArray(s.nodes) ? s.nodes : []);
    renderQueue(s.queue_depth && typeof s.queue_depth === "object" ? s.queue_depth : {});
    renderCache(s.cache && typeof s.cache === "object" ? s.cache : {});
    renderRedis(s.redis && typeof s.redis === "object" ? s.redis : null);
    renderErrors(Array.isArray(s.recent_errors) ? s.recent_errors : []);
  }

  // setState shows the connection state: connected, disconnected (the
  // last data stays, dimmed) or unauthorized (the token form appears).
  function setState(state, message) {
    document.body.dataset.state = state;
    document.body.classList.toggle("stale", state !== "connected");
    const banner = $("banner");
    banner.hidden = state === "connected";
    banner.textContent = message || "";
    banner.classList.toggle("notice", state === "unauthorized");
    $("token-form").hidden = state !== "unauthorized";
    if (state === "connected") {
      lastSuccess = new Date();
      text("updated", "updated " + lastSuccess.toLocaleTimeString());
    } else if (lastSuccess) {
      text("updated", "last update " + lastSuccess.toLocaleTimeString());
    } else {
      text("updated", "no data yet");
    }
  }

  async function poll() {
    const token = sessionStorage.getItem(tokenKey) || "";
    const headers = { Accept: "application/json" };
    if (token) {
      headers.Authorization = "Bearer " + token;
    }
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), timeoutMs);
    try {
      const resp = await fetch(statusURL, { headers, cache: "no-store", signal: abort.signal });
      if (resp.status === 401) {
        setState("unauthorized", token ? "Admin token rejected. Enter the current token."
          : "This proxy requires an admin token.");
        return;
      }
      if (!resp.ok) {
        throw new Error("HTTP " + resp.status + (resp.statusText ? " " + resp.statusText : ""));
      }
      render(await resp.json());
      setState("connected", "");
    } catch (err) {
      const reason = err && err.name === "AbortError" ? "timed out after " + timeoutMs / 1000 + " s"
        : String((err && err.message) || err);
      setState("disconnected", "Disconnected from the proxy: " + reason + ". Retrying every " +
        refreshMs / 1000 + " s" + (lastSuccess ? "; the data below is from " +
          lastSuccess.toLocaleTimeString() + "." : "."));
    } finally {
      clearTimeout(deadline);
      schedule(refreshMs);
    }
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(tokenKey, $("token-input").value);
    $("token-input").value = "";
    schedule(0);
  });

  text("interval", refreshMs / 1000);
  text("source", statusURL);
  takeTokenFromFragment();
  poll();
})();
