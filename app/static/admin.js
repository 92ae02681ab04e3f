// Segflow admin UI: what htmx does not do. No inline scripts (the pages' CSP forbids them).
"use strict";

function localTimes(root) {
  // <time data-ms="..."> in the reader's own time zone
  for (const node of root.querySelectorAll("time[data-ms]")) {
    node.textContent = new Date(Number(node.dataset.ms)).toLocaleString();
  }
}

function sizeChart() {
  const target = document.getElementById("size-chart");
  const source = document.getElementById("size-chart-data");
  if (!target || !source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const anomalies = data.size.map((size, i) => (data.anomaly[i] ? size : null));
  const options = {
    width: target.clientWidth || 800,
    height: 260,
    scales: {
      // one sample (a segment's first minute): the minutes around it, not the 1,000 days
      // uPlot spans around a lone point of a time scale in seconds
      x: { time: true, range: (u, min, max) => (data.at.length === 1 ? [data.at[0] - 900, data.at[0] + 60] : [min, max]) },
    },
    series: [
      {},
      { label: "members", stroke: "#3b5bdb", width: 2, fill: "rgba(59,91,219,0.08)" },
      { label: "anomaly", stroke: "#e03131", width: 0, points: { show: true, size: 9, fill: "#e03131" } },
    ],
    axes: [{}, { size: 60 }],
  };
  const chart = new uPlot(options, [data.at, data.size, anomalies], target);
  target.dataset.rendered = String(data.at.length);
  window.addEventListener("resize", () => chart.setSize({ width: target.clientWidth, height: 260 }));
}

function swatches(root) {
  // a cluster's colour, as in the picture (the CSP forbids inline styles, not the CSSOM)
  for (const node of root.querySelectorAll(".swatch[data-colour]")) {
    node.style.background = node.dataset.colour;
  }
}

function drawDots(u, seriesIdx) {
  // a scatter series: a dot per point, no line (uPlot's mode 2 draws what `paths` draws)
  uPlot.orient(u, seriesIdx, (series, dataX, dataY, scaleX, scaleY, valToPosX, valToPosY, xOff, yOff, xDim, yDim, moveTo, lineTo, rect, arc) => {
    const [xs, ys] = u.data[seriesIdx];
    const radius = 3 * uPlot.pxRatio;
    const dots = new Path2D();
    for (let i = 0; i < xs.length; i++) {
      const cx = valToPosX(xs[i], scaleX, xDim, xOff);
      const cy = valToPosY(ys[i], scaleY, yDim, yOff);
      dots.moveTo(cx + radius, cy);
      arc(dots, cx, cy, radius, 0, 2 * Math.PI);
    }
    u.ctx.save();
    u.ctx.beginPath();
    u.ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    u.ctx.clip();
    u.ctx.globalAlpha = 0.75;
    u.ctx.fillStyle = series.stroke(u, seriesIdx);
    u.ctx.fill(dots);
    u.ctx.restore();
  });
  return null;
}

function clusterChart() {
  const target = document.getElementById("cluster-chart");
  const source = document.getElementById("cluster-chart-data");
  if (!target || !source || target.dataset.rendered || typeof uPlot === "undefined") return;
  const chart = JSON.parse(source.textContent);
  const shown = chart.series.filter((s) => s.x.length > 0);
  const options = {
    mode: 2,
    width: target.clientWidth || 800,
    height: 380,
    legend: { live: false },
    cursor: { show: false },
    scales: { x: { time: false }, y: {} },
    series: [{}, ...shown.map((s) => ({ label: s.label, stroke: s.colour, fill: s.colour, paths: drawDots }))],
    axes: [{ label: "first principal component" }, { label: "second principal component", size: 60 }],
  };
  const plot = new uPlot(options, [null, ...shown.map((s) => [s.x, s.y])], target);
  target.dataset.rendered = String(shown.reduce((n, s) => n + s.x.length, 0));
  window.addEventListener("resize", () => plot.setSize({ width: target.clientWidth, height: 380 }));
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  sizeChart();
  swatches(document);
  clusterChart();
  document.body.addEventListener("htmx:afterSwap", (event) => {
    localTimes(event.target);
    clusterChart();
  });
  document.body.dataset.ready = "1"; // htmx (whose listener ran first) has wired the page
});

// A problem's "line L, column C" selects its line in the editor from that column on.
document.addEventListener("click", (event) => {
  const link = event.target.closest("ul.problems a.line");
  const editor = document.getElementById("source");
  if (!link || !editor) return;
  event.preventDefault();
  const item = link.closest("li");
  const line = Number(item.dataset.line);
  const lines = editor.value.split("\n");
  const text = lines[line - 1] || "";
  const lineStart = lines.slice(0, line - 1).reduce((n, each) => n + each.length + 1, 0);
  // Columns count characters (code points); the editor counts UTF-16 units.
  const before = Array.from(text).slice(0, Math.max(Number(item.dataset.column) - 1, 0));
  editor.focus();
  editor.setSelectionRange(lineStart + before.join("").length, lineStart + text.length);
});
