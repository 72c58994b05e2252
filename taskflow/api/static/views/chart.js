// The throughput chart of the operator overview: attempts ended per minute
// over the last hour, with a scale. Completed tasks are a line over an area,
// failed attempts red bars; the y axis counts tasks per minute from 0 to a
// round number, the x axis shows the time of day every 15 minutes.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 560;
const HEIGHT = 210;
const MARGIN = { top: 10, right: 14, bottom: 40, left: 52 };
const TICKS = 4;

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  element.append(...children);
  return element;
}

/** The smallest of 1, 2, 5, 10, 20, 50, … at least `value`. */
function roundUp(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * power).find((step) => step >= value);
}

const pad = (n) => String(n).padStart(2, "0");
const clock = (date) => `${pad(date.getHours())}:${pad(date.getMinutes())}`;

/** buckets: [{at, completed, failed, retried}], one a minute, oldest first. */
export function throughputChart(buckets, bucketSeconds = 60) {
  const perMinute = 60 / bucketSeconds;
  const peak = Math.max(0, ...buckets.map((b) => Math.max(b.completed, b.failed) * perMinute));
  const step = roundUp(Math.max(1, peak / TICKS));
  const top = step * TICKS;
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const bottom = MARGIN.top + plotHeight;
  const x = (index) => MARGIN.left + (buckets.length > 1 ? (index / (buckets.length - 1)) * plotWidth : 0);
  const y = (count) => bottom - ((count * perMinute) / top) * plotHeight;

  const completed = buckets.reduce((sum, b) => sum + b.completed, 0);
  const failed = buckets.reduce((sum, b) => sum + b.failed, 0);
  const first = buckets.length ? clock(new Date(buckets[0].at)) : "";
  const last = buckets.length ? clock(new Date(buckets[buckets.length - 1].at)) : "";
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", id: "sparkline",
    role: "img", "aria-label": `Tasks per minute from ${first} to ${last}: ${completed} completed, `
      + `${failed} failed; at most ${Math.round(peak)} a minute` });

  const yAxis = svg("g", { class: "y-axis" });
  for (let tick = 0; tick <= TICKS; tick += 1) {
    const value = tick * step;
    const at = y(value / perMinute);
    yAxis.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: at, y2: at,
      class: tick ? "grid" : "axis" }));
    const label = svg("text", { x: MARGIN.left - 6, y: at + 4, "text-anchor": "end", class: "tick" });
    label.textContent = String(value);
    yAxis.append(label);
  }
  const yTitle = svg("text", { class: "axis-title", "text-anchor": "middle",
    transform: `translate(14 ${MARGIN.top + plotHeight / 2}) rotate(-90)` });
  yTitle.textContent = "tasks / minute";
  yAxis.append(yTitle);

  const xAxis = svg("g", { class: "x-axis" });
  buckets.forEach((bucket, index) => {
    const fromEnd = buckets.length - 1 - index;
    if (fromEnd % 15 !== 0) return;
    xAxis.append(svg("line", { x1: x(index), x2: x(index), y1: bottom, y2: bottom + 4, class: "axis" }));
    const label = svg("text", { x: x(index), y: bottom + 17, "text-anchor": "middle", class: "tick" });
    label.textContent = clock(new Date(bucket.at));
    xAxis.append(label);
  });
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  const xTitle = svg("text", { x: MARGIN.left + plotWidth / 2, y: HEIGHT - 4, "text-anchor": "middle",
    class: "axis-title" });
  xTitle.textContent = `time (${zone}), one point a minute`;
  xAxis.append(xTitle);
  chart.append(yAxis, xAxis);

  const points = buckets.map((b, i) => `${x(i).toFixed(1)},${y(b.completed).toFixed(1)}`);
  if (points.length) {
    chart.append(svg("polygon", { class: "area",
      points: `${x(0)},${bottom} ${points.join(" ")} ${x(buckets.length - 1)},${bottom}` }));
    chart.append(svg("polyline", { points: points.join(" "), class: "line" }));
  }
  buckets.forEach((b, i) => {
    if (b.failed) {
      chart.append(svg("rect", { x: x(i) - 2, y: y(b.failed), width: 4, height: bottom - y(b.failed),
        class: "failed" }));
    }
    const title = svg("title");
    title.textContent = `${clock(new Date(b.at))}: ${b.completed} completed, ${b.failed} failed, ${b.retried} retried`;
    chart.append(svg("circle", { cx: x(i), cy: y(b.completed), r: b.completed ? 2.5 : 0, class: "dot" }, title));
  });
  return chart;
}
