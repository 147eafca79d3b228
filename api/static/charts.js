// Two small live charts on <canvas>: decisions per second by action, and the score distribution.
// Both use a log scale: approvals outnumber reviews and declines a hundred to one, and on a
// linear axis the interesting part would be one pixel high.

export const ACTIONS = ['approve', 'review', 'decline'];
const COLORS = { approve: '#2f9e6e', review: '#d98e04', decline: '#d64545' };
const AXIS = '#8a94a6';
const GRID = '#e7ebf0';
const FONT = '11px system-ui, -apple-system, "Segoe UI", sans-serif';

const logScale = (value, max) => (max > 0 ? Math.log10(1 + value) / Math.log10(1 + max) : 0);

function niceTicks(max) {
  const ticks = [];
  for (let t = 1; t <= Math.max(1, max); t *= 10) ticks.push(t);
  return ticks;
}

function compact(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(n >= 1e4 ? 0 : 1)}k`;
  return String(n);
}

/** A canvas that keeps its backing store at the element's size times the device pixel ratio. */
class CanvasChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.dirty = true;
    new ResizeObserver(() => { this.dirty = true; this.draw(); }).observe(canvas);
  }

  prepare() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (!width || !height) return null;
    if (this.canvas.width !== Math.round(width * ratio)) this.canvas.width = Math.round(width * ratio);
    if (this.canvas.height !== Math.round(height * ratio)) this.canvas.height = Math.round(height * ratio);
    const ctx = this.ctx;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    return { ctx, width, height };
  }

  /** Horizontal grid lines at 1, 10, 100, ... on a log axis; returns the plot area. */
  logGrid(ctx, width, height, max) {
    const left = 34;
    const top = 8;
    const bottom = height - 18;
    const right = width - 6;
    ctx.strokeStyle = GRID;
    ctx.fillStyle = AXIS;
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const tick of [0, ...niceTicks(max)]) {
      const y = Math.round(bottom - logScale(tick, max) * (bottom - top)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      ctx.fillText(compact(tick), left - 5, y);
    }
    return { left, top, bottom, right };
  }
}

/** Decisions per second over the last `seconds`, one line per action. */
export class RateChart extends CanvasChart {
  constructor(canvas, seconds = 60) {
    super(canvas);
    this.seconds = seconds;
    this.buckets = new Map(); // epoch second -> {approve, review, decline}
  }

  reset() {
    this.buckets.clear();
    this.dirty = true;
  }

  add(action, now = Date.now()) {
    const second = Math.floor(now / 1000);
    let bucket = this.buckets.get(second);
    if (!bucket) {
      bucket = { approve: 0, review: 0, decline: 0 };
      this.buckets.set(second, bucket);
      for (const key of this.buckets.keys()) {
        if (key <= second - this.seconds - 2) this.buckets.delete(key);
        else break; // insertion order is time order
      }
    }
    if (action in bucket) bucket[action] += 1;
    this.dirty = true;
  }

  /** Counts of the last complete second. */
  lastSecond(now = Date.now()) {
    const bucket = this.buckets.get(Math.floor(now / 1000) - 1);
    return bucket ? bucket.approve + bucket.review + bucket.decline : 0;
  }

  draw(now = Date.now()) {
    const area = this.prepare();
    if (!area) return;
    const { ctx, width, height } = area;
    const last = Math.floor(now / 1000) - 1; // the current second is still filling
    const series = { approve: [], review: [], decline: [] };
    let max = 1;
    for (let i = this.seconds - 1; i >= 0; i -= 1) {
      const bucket = this.buckets.get(last - i) || { approve: 0, review: 0, decline: 0 };
      for (const action of ACTIONS) {
        series[action].push(bucket[action]);
        max = Math.max(max, bucket[action]);
      }
    }
    const { left, top, bottom, right } = this.logGrid(ctx, width, height, max);
    const step = (right - left) / (this.seconds - 1);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    ctx.fillStyle = AXIS;
    for (const ago of [60, 45, 30, 15, 0]) {
      if (ago >= this.seconds) continue;
      const x = right - ago * step;
      ctx.fillText(ago ? `-${ago}s` : 'now', Math.min(right - 10, Math.max(left + 10, x)), bottom + 4);
    }
    const y = (v) => bottom - logScale(v, max) * (bottom - top);
    for (const action of ACTIONS) {
      const values = series[action];
      ctx.beginPath();
      values.forEach((v, i) => (i ? ctx.lineTo(left + i * step, y(v)) : ctx.moveTo(left, y(v))));
      if (action === 'approve') {
        ctx.lineTo(right, bottom);
        ctx.lineTo(left, bottom);
        ctx.closePath();
        ctx.fillStyle = 'rgba(47, 158, 110, 0.16)';
        ctx.fill();
        ctx.beginPath();
        values.forEach((v, i) => (i ? ctx.lineTo(left + i * step, y(v)) : ctx.moveTo(left, y(v))));
      }
      ctx.strokeStyle = COLORS[action];
      ctx.lineWidth = action === 'approve' ? 1.5 : 2;
      ctx.stroke();
    }
    this.dirty = false;
  }
}

/** Score histogram over the last `window` decisions: `bins` bars, stacked by action. */
export class ScoreHistogram extends CanvasChart {
  constructor(canvas, { bins = 20, window = 10000 } = {}) {
    super(canvas);
    this.bins = bins;
    this.window = window;
    this.reset();
  }

  reset() {
    this.counts = ACTIONS.map(() => new Array(this.bins).fill(0));
    this.ring = new Int16Array(this.window); // bin * 4 + action index of each remembered decision
    this.size = 0;
    this.head = 0;
    this.dirty = true;
  }

  add(action, score) {
    const a = ACTIONS.indexOf(action);
    if (a < 0 || !Number.isFinite(score)) return;
    const bin = Math.min(this.bins - 1, Math.max(0, Math.floor(score * this.bins)));
    if (this.size === this.window) {
      const old = this.ring[this.head];
      this.counts[old & 3][old >> 2] -= 1;
    } else {
      this.size += 1;
    }
    this.ring[this.head] = (bin << 2) | a;
    this.head = (this.head + 1) % this.window;
    this.counts[a][bin] += 1;
    this.dirty = true;
  }

  draw() {
    const area = this.prepare();
    if (!area) return;
    const { ctx, width, height } = area;
    let max = 1;
    for (let b = 0; b < this.bins; b += 1) {
      max = Math.max(max, this.counts[0][b] + this.counts[1][b] + this.counts[2][b]);
    }
    const { left, top, bottom, right } = this.logGrid(ctx, width, height, max);
    const barWidth = (right - left) / this.bins;
    const y = (v) => bottom - logScale(v, max) * (bottom - top);
    for (let b = 0; b < this.bins; b += 1) {
      // Stack on the log axis by cumulative count, so the top of the bar is the bin's total.
      let below = 0;
      for (let a = 0; a < ACTIONS.length; a += 1) {
        const count = this.counts[a][b];
        if (!count) continue;
        const y0 = y(below);
        const y1 = y(below + count);
        ctx.fillStyle = COLORS[ACTIONS[a]];
        ctx.fillRect(left + b * barWidth + 1, y1, Math.max(1, barWidth - 2), y0 - y1);
        below += count;
      }
    }
    ctx.fillStyle = AXIS;
    ctx.textBaseline = 'top';
    ctx.textAlign = 'center';
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      ctx.fillText(String(tick), Math.min(right - 8, Math.max(left + 6, left + tick * (right - left))), bottom + 4);
    }
    this.dirty = false;
  }
}
