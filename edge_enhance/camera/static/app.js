// Viewfinder page: two MJPEG streams stacked, the "after" one clipped by the slider; stats polled.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token");
  const q = token ? "?token=" + encodeURIComponent(token) : "";
  const headers = { "Content-Type": "application/json" };
  if (token) headers["X-Token"] = token;
  const $ = (id) => document.getElementById(id);

  $("before").src = "/stream/before.mjpg" + q;
  $("after").src = "/stream/after.mjpg" + q;

  function setSplit(v) {
    $("after").style.clipPath = "inset(0 0 0 " + v + "%)";
    $("divider").style.left = v + "%";
  }
  $("split").addEventListener("input", (e) => setSplit(e.target.value));
  setSplit($("split").value);

  function say(text) { $("message").textContent = text; }

  function showState(s) {
    if ("enhance" in s) $("toggle").textContent = "Enhance: " + (s.enhance ? "on" : "off");
    if ("strength" in s) $("strength").textContent = Number(s.strength).toFixed(1);
  }

  async function post(path, body) {
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}), credentials: "same-origin" });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  document.querySelectorAll("button[data-action]").forEach((b) =>
    b.addEventListener("click", () => post("/api/control", { action: b.dataset.action }).then(showState, (e) => say(e.message))));

  $("snapshot").addEventListener("click", async () => {
    say("taking snapshot…");
    try {
      const s = await post("/api/snapshot");
      const a = $("download");
      a.href = s.url + q;
      a.download = s.name;
      a.click();
      say("saved " + s.name);
    } catch (e) { say("snapshot failed: " + e.message); }
  });

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT") return;
    const map = { e: "toggle", s: "split", "+": "strength_up", "=": "strength_up", "-": "strength_down" };
    if (map[e.key]) post("/api/control", { action: map[e.key] }).then(showState, (err) => say(err.message));
    if (e.key === "p" || e.key === " ") { e.preventDefault(); $("snapshot").click(); }
  });

  const fmt = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(1)) : String(v));
  function row(k, v) { return "<tr><td>" + k + "</td><td>" + v + "</td></tr>"; }
  function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

  async function poll() {
    try {
      const r = await fetch("/api/stats" + q, { headers, credentials: "same-origin" });
      if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
      const s = await r.json();
      const lat = s.latency_ms || {};
      const size = (v) => (v ? v[0] + "×" + v[1] : "–");
      let html = row("input / output fps", fmt(s.input_fps) + " / " + fmt(s.output_fps)) +
        row("dropped", fmt(s.dropped)) +
        row("latency p50 / p95", fmt(lat.p50) + " / " + fmt(lat.p95) + " ms") +
        row("engine", fmt(s.engine_ms) + " ms") +
        row("model", esc(fmt(s.active_model || s.model))) +
        row("size in → processed → out", size(s.input_size) + " → " + size(s.processed_size) + " → " + size(s.output_size));
      if (s.adaptive) html += row("adaptive", "target " + s.adaptive.target_fps + " fps, scale " + s.adaptive.scale + (s.adaptive.lowered ? " (lowered)" : ""));
      if (s.web) html += row("viewers", fmt(s.web.clients) + " (frames sent " + fmt(s.web.sent) + ", dropped " + fmt(s.web.dropped) + ")");
      $("stats").tBodies[0].innerHTML = html;
      showState(s);
      $("status").textContent = "live";
    } catch (e) {
      $("status").textContent = "disconnected (" + e.message + ")";
    }
  }
  poll();
  setInterval(poll, 1000);
})();
