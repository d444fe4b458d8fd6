// Time-series charts (uPlot, vendored). A chart keeps its points in plain arrays and redraws
// at most a few times a second, however fast samples come; past MAX_POINTS it keeps every
// other point, so a long session's chart stays light.
import uPlot from "./vendor/uplot/uPlot.esm.js";
import { h, PALETTE } from "./ui.js";

const MAX_POINTS = 20000;
const REDRAW_MS = 250;

function size(el) {
  const width = Math.max(260, el.clientWidth - 12);
  return { width, height: 190 };
}

export class LiveChart {
  constructor(parent, metric) {
    this.metric = metric;
    this.x = [];
    this.y = [];
    this.dirty = false;
    this.element = h("figure", { class: "chart", dataset: { metric } },
      h("h4", {}, metric.replace(/_/g, " ")));
    parent.append(this.element);
    this.plot = new uPlot({
      ...size(this.element),
      legend: { show: true },
      scales: { x: { time: false } },
      axes: [{ label: "sim time (s)" }, {}],
      series: [{ label: "sim time" }, { label: metric, stroke: PALETTE[0], width: 1.5 }],
    }, [this.x, this.y], this.element);
    this.timer = setInterval(() => this.flush(), REDRAW_MS);
    this.resize = () => this.plot.setSize(size(this.element));
    window.addEventListener("resize", this.resize);
  }

  push(t, v) {
    this.x.push(t);
    this.y.push(v);
    if (this.x.length > MAX_POINTS) {
      this.x = this.x.filter((_, i) => i % 2 === 0);
      this.y = this.y.filter((_, i) => i % 2 === 0);
    }
    this.dirty = true;
  }

  // Empty again (a rerun's samples start over).
  reset() {
    this.x = [];
    this.y = [];
    this.dirty = true;
  }

  get points() { return this.x.length; }

  flush() {
    if (!this.dirty) return;
    this.dirty = false;
    this.plot.setData([this.x, this.y]);
    this.element.dataset.points = String(this.x.length);
    this.element.dataset.last = String(this.x[this.x.length - 1]);
  }

  destroy() {
    clearInterval(this.timer);
    window.removeEventListener("resize", this.resize);
    this.plot.destroy();
  }
}

// Overlaid series differ by their dash as well as their colour (the legend's marker shows both),
// so they are told apart without telling colours apart.
const DASHES = [{ dash: [], marker: "solid" }, { dash: [9, 4], marker: "dashed" }, { dash: [2, 3], marker: "dotted" }];

// Several sessions' series of one metric on one chart (each with its own sim times).
export function overlay(parent, metric, series) {
  const data = uPlot.join(series.map((s) => [s.x, s.y]));
  const el = h("figure", { class: "chart", dataset: { metric } }, h("h4", {}, metric.replace(/_/g, " ")));
  parent.append(el);
  const plot = new uPlot({
    ...size(el),
    scales: { x: { time: false } },
    axes: [{ label: "sim time (s)" }, {}],
    // uPlot merges `legend` one level deep: the markers' other options are given again.
    legend: { markers: { show: true, width: 2, dash: (_, i) => DASHES[Math.max(0, i - 1) % DASHES.length].marker,
      stroke: (u, i) => u.series[i].stroke(u, i), fill: (u, i) => u.series[i].fill(u, i) } },
    series: [{ label: "sim time" }, ...series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length], dash: DASHES[i % DASHES.length].dash, width: 2, spanGaps: true }))],
  }, data, el);
  return plot;
}
