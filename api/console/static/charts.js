// Stacked bar charts drawn as SVG with DOM calls only (no inline style, no library):
// one bar per day, one coloured segment per series (model or tenant). Each segment carries
// data-day, data-series and data-value, and a <title> for the tooltip.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function formatValue(v, money) {
  if (money) return "$" + (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toFixed(4));
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return String(Math.round(v));
}

// rows: [{day, series, value}]; returns a <div> holding the svg and its legend. `label` turns
// a bar's key (sorted as text: ISO days or times) into its axis label.
function stackedBars(id, title, rows, money, label = (day) => day.slice(5)) {
  const days = [...new Set(rows.map((r) => r.day))].sort();
  const series = [...new Set(rows.map((r) => r.series))].sort();
  const totals = {};
  for (const r of rows) totals[r.day] = (totals[r.day] || 0) + r.value;
  const max = Math.max(0, ...Object.values(totals));
  const width = 760, height = 240, left = 60, bottom = 30, top = 24;
  const plotH = height - top - bottom;
  const svg = svgEl("svg", {
    id, class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": title,
  });
  const heading = svgEl("text", { x: left, y: 16 });
  heading.textContent = title;
  svg.appendChild(heading);
  svg.appendChild(svgEl("line", { x1: left, y1: top + plotH, x2: width - 10, y2: top + plotH, stroke: "#aab4bf" }));
  const maxLabel = svgEl("text", { x: 4, y: top + 10 });
  maxLabel.textContent = formatValue(max, money);
  svg.appendChild(maxLabel);
  if (!days.length) {
    const empty = svgEl("text", { x: left + 10, y: top + plotH / 2 });
    empty.textContent = "nothing in this period";
    svg.appendChild(empty);
  }
  const slot = (width - left - 10) / Math.max(days.length, 1);
  const barW = Math.max(4, Math.min(48, slot * 0.7));
  days.forEach((day, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    let y = top + plotH;
    series.forEach((name, s) => {
      const row = rows.filter((r) => r.day === day && r.series === name);
      const value = row.reduce((a, r) => a + r.value, 0);
      if (!value) return;
      const h = max ? Math.max(1, (value / max) * plotH) : 0;
      y -= h;
      const rect = svgEl("rect", {
        x, y, width: barW, height: h, class: "c" + (s % 8),
        "data-day": day, "data-series": name, "data-value": value,
      });
      const tip = svgEl("title");
      tip.textContent = `${day} ${name}: ${formatValue(value, money)}`;
      rect.appendChild(tip);
      svg.appendChild(rect);
    });
    const text = svgEl("text", { x: x, y: height - 10 });
    text.textContent = label(day);
    svg.appendChild(text);
  });
  const box = document.createElement("div");
  box.appendChild(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((name, s) => {
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch c" + (s % 8);
    item.append(sw, name);
    legend.appendChild(item);
  });
  box.appendChild(legend);
  return box;
}

window.llmqCharts = { stackedBars, formatValue };
