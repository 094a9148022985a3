// The mobillm status page: polls status.json and draws every job. DOM built with textContent only.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const W = 360, H = 160, PAD = { left: 44, right: 8, top: 8, bottom: 18 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const count = (n) => n.toLocaleString("en-US");

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function seconds(s) {
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function short(v) {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2);
}

// A line chart of (step, value) series: [{name, cls, points}]; one circle per point when there are few.
function chart(caption, series) {
  const all = series.flatMap((s) => s.points);
  const figure = el("figure");
  const cap = el("figcaption");
  series.forEach((s, i) => {
    if (i) cap.append(" · ");
    cap.append(el("span", { class: `key-${s.cls}` }, `${s.name} (${s.points.length})`));
  });
  cap.prepend(`${caption}: `);
  const box = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": caption });
  figure.append(cap, box);
  if (!all.length) {
    box.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no data yet"));
    return figure;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  box.append(
    svg("text", { x: PAD.left - 4, y: PAD.top + 8, "text-anchor": "end", class: "axis" }, short(y1)),
    svg("text", { x: PAD.left - 4, y: H - PAD.bottom, "text-anchor": "end", class: "axis" }, short(y0)),
    svg("text", { x: PAD.left, y: H - 4, class: "axis" }, `step ${x0}`),
    svg("text", { x: W - PAD.right, y: H - 4, "text-anchor": "end", class: "axis" }, `step ${x1}`),
  );
  for (const s of series) {
    if (!s.points.length) continue;
    const coords = s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`);
    box.append(svg("polyline", { class: `series-${s.cls}`, "data-series": s.name, "data-points": s.points.length,
                                 points: coords.join(" ") }));
    if (s.points.length <= 40) {
      for (const [x, y] of s.points) box.append(svg("circle", { class: `series-${s.cls}`, cx: px(x), cy: py(y), r: 2 }));
    }
  }
  return figure;
}

function errorText(err) {
  if (!err) return "—";
  return `${err.code}: ${err.message} (${new Date(err.time * 1000).toLocaleTimeString()})`;
}

function jobCard(job) {
  const figures = [
    ["sessions", count(job.sessions)],
    ["samples received", `train ${count(job.samples_received.train ?? 0)} · eval ${count(job.samples_received.eval ?? 0)}`],
    ["samples trained", count(job.samples_trained)],
    ["batches received", count(job.batches_received)],
    ["step", `${count(job.step)} / ${count(job.steps_per_epoch * job.epochs)}`],
    ["epoch", `${job.epoch.toFixed(2)} / ${job.epochs}`],
    ["last loss", job.last_loss === null ? "—" : job.last_loss.toFixed(4)],
    ["bytes in", bytes(job.bytes_received)],
    ["throughput", `${job.samples_per_s.toFixed(1)} samples/s · ${bytes(job.bytes_per_s)}/s`],
    ["mean train step", job.train_step_seconds.counts.some((c) => c)
      ? `${(1000 * job.train_step_seconds.total_seconds / job.train_step_seconds.counts.reduce((a, b) => a + b)).toFixed(1)} ms`
      : "—"],
    ["cache", `memory ${bytes(job.cache_memory_bytes)} · disk ${bytes(job.cache_disk_bytes)}`],
    ["elapsed", seconds(job.elapsed_s)],
    ["last error", job.failure ? `training failed: ${job.failure}` : errorText(job.last_error)],
  ];
  const dl = el("dl", { class: "figures" });
  for (const [name, value] of figures) {
    dl.append(el("dt", {}, name), el("dd", { "data-field": name }, value));
  }
  const curves = job.curves;
  const charts = el("div", { class: "charts" },
    chart("loss", [{ name: "train", cls: "loss", points: curves.loss ?? [] },
                   ...(curves.val_loss?.length ? [{ name: "validation", cls: "val", points: curves.val_loss }] : [])]));
  if (job.task === "classification") {
    charts.append(chart("accuracy", [{ name: "validation", cls: "val", points: curves.val_accuracy ?? [] }]));
  }
  return el("section", { class: "job", "data-job": job.job },
    el("h2", {}, el("span", { class: "name" }, job.job), el("span", { class: `state state-${job.state}` }, job.state)),
    el("p", { class: "meta" }, `${job.task} · ${job.model} · codec ${job.codec}`),
    dl, charts);
}

function render(status) {
  document.getElementById("server").textContent =
    `mobillm ${status.version} · up ${seconds(status.uptime_s)} · sessions ${status.sessions} / ${status.max_sessions}` +
    ` · ${status.jobs.length} job${status.jobs.length === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
  const last = document.getElementById("server-error");
  last.hidden = !status.last_error;
  last.textContent = status.last_error
    ? `last error${status.last_error.job ? ` (job ${status.last_error.job})` : ""}: ${errorText(status.last_error)}` : "";
  const jobs = document.getElementById("jobs");
  jobs.replaceChildren(...(status.jobs.length ? status.jobs.map(jobCard) : [el("p", { class: "empty" }, "no jobs yet")]));
}

async function refresh() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (err) {
    document.getElementById("server").textContent = `status.json unreachable (${err.message}); retrying`;
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

refresh();
