// Polls /dashboard/data and fills the diagram's figures and the gallery. Plain JS, no build step.
// Text goes in with textContent and URLs are checked, so nothing from a job can become markup.
"use strict";

const POLL_MS = 2000;

function setFigures(figures) {
  for (const slot of document.querySelectorAll("[data-figure]")) {
    const text = figures[slot.dataset.figure];
    if (text !== undefined) slot.textContent = text;
  }
}

function line(parent, className, text) {
  const el = document.createElement("div");
  el.className = className;
  el.textContent = text;
  parent.appendChild(el);
  return el;
}

function card(item) {
  const el = document.createElement("figure");
  el.className = "card";
  el.dataset.jobId = item.job_id;
  const img = document.createElement("img");
  if (/^https?:\/\//.test(item.url)) img.src = item.url;
  img.alt = item.prompt || item.job_id;
  el.appendChild(img);
  line(el, "prompt", item.prompt || item.job_id);
  const route = line(el, "route route-" + (item.route || "cache"), item.route || "cache");
  route.title = item.route_reason || "";
  line(el, "provider", "provider " + (item.provider || "—"));
  line(el, "latency", item.latency_s == null ? "latency —" : "latency " + item.latency_s.toFixed(2) + " s");
  line(el, "cost", item.cost_usd == null ? "cost —" : "cost $" + item.cost_usd);
  if (item.score != null) {
    const score = line(el, "score", item.score.toFixed(1) + " " + item.band);
    if (/^#[0-9a-f]{6}$/.test(item.band_color)) score.style.background = item.band_color;
  }
  return el;
}

function setGallery(items) {
  const gallery = document.getElementById("gallery");
  gallery.replaceChildren(...items.map(card));
  document.getElementById("gallery-empty").hidden = items.length > 0;
}

async function poll() {
  const updated = document.getElementById("updated");
  try {
    const response = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(response.status + " " + (body.detail || response.statusText));
    }
    const data = await response.json();
    setFigures(data.figures);
    setGallery(data.gallery);
    updated.textContent = "updated " + new Date().toLocaleTimeString() + " · measured " + data.status.measured_at;
    updated.classList.remove("stale");
  } catch (error) {
    updated.textContent = "not updated: " + error.message;
    updated.classList.add("stale");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
