// chart.js: dependency-free rendering helpers: an element builder, score bars, lazy thumbnails and an inline-SVG line chart.

const SVG = 'http://www.w3.org/2000/svg';

/** Builds an element: h('p', {class: 'x', dataset: {a: 1}, onclick}, 'text', child, ...). */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== 'string') node[name] = value;
    else node.setAttribute(name, value === true ? '' : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export const pct = (score) => (score === null || score === undefined ? '–' : `${(score * 100).toFixed(1)}%`);
export const ms = (value) => (value === null || value === undefined ? '–' : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`);
export function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Horizontal bars, one per {label, score} (score 0..1), or per {label, value} scaled to the largest. */
export function bars(items, { format = pct, testid = 'bar' } = {}) {
  const largest = Math.max(1e-9, ...items.map((i) => i.value ?? i.score ?? 0));
  return h('ul', { class: 'bars' }, items.map((item) => {
    const value = item.value ?? item.score ?? 0;
    const fill = h('span', { class: 'bar-fill' });
    fill.style.width = `${Math.max(0, Math.min(100, (item.value === undefined ? value : value / largest) * 100))}%`;
    return h('li', { dataset: { testid, label: item.label } },
      h('span', { class: 'bar-label' }, item.label),
      h('span', { class: 'bar', 'aria-hidden': 'true' }, fill),
      h('span', { class: 'bar-value' }, format(value)));
  }));
}

// Lazy images: `load()` runs when the image scrolls near the viewport; it returns a URL promise.
const pending = new WeakMap();
const observer = 'IntersectionObserver' in window
  ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      startLoad(entry.target);
    }
  }, { rootMargin: '300px' })
  : null;

function startLoad(img) {
  const load = pending.get(img);
  if (!load) return;
  pending.delete(img);
  load().then((url) => { img.src = url; }, (error) => {
    img.replaceWith(h('span', { class: 'no-preview', title: error.message }, 'no preview'));
  });
}

export function lazyImage(alt, load, className = 'thumb') {
  const img = h('img', { alt, class: className, decoding: 'async' });
  pending.set(img, load);
  if (observer) observer.observe(img);
  else queueMicrotask(() => startLoad(img));
  return img;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

/** Round tick values covering [min, max]. */
function ticks(min, max, count = 4) {
  const span = max - min || 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.floor(min / step) * step; out.length < 50; v += step) {
    out.push(Number(v.toPrecision(12)));
    if (v >= max - step * 1e-6) break;
  }
  return out;
}

/**
 * A line chart of 1 to 3 series as an <svg role="img"> with a <title>, axes and a legend.
 * series: [{name, points: [[x, y], ...]}]; options: title, xLabel, yFormat, xFormat, yMin, yMax.
 */
export function lineChart({ title, series, xLabel = '', yFormat = (v) => num(v, 2), xFormat = (v) => num(v), yMin, yMax }) {
  const W = 480, H = 220, L = 52, R = 12, T = 30, B = 34;
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs, Infinity), x1 = Math.max(...xs, -Infinity);
  const yTicks = ticks(yMin ?? Math.min(0, ...ys), yMax ?? Math.max(...ys, 1e-9));
  const y0 = yTicks[0], y1 = yTicks[yTicks.length - 1];
  const px = (x) => L + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const last = series.map((s) => `${s.name} ${s.points.length ? yFormat(s.points[s.points.length - 1][1]) : 'none'}`);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart' },
    svg('title', {}, title), svg('desc', {}, `Latest: ${last.join(', ')}`));
  for (const t of yTicks) {
    chart.append(svg('line', { x1: L, x2: W - R, y1: py(t), y2: py(t), class: 'grid' }),
      svg('text', { x: L - 6, y: py(t) + 4, class: 'tick', 'text-anchor': 'end' }, yFormat(t)));
  }
  if (all.length) {
    const xt = x1 > x0 ? ticks(x0, x1, 4).filter((t) => t >= x0 && t <= x1) : [x0];
    for (const t of xt) chart.append(svg('text', { x: px(t), y: H - B + 16, class: 'tick', 'text-anchor': 'middle' }, xFormat(t)));
  } else {
    chart.append(svg('text', { x: W / 2, y: H / 2, class: 'tick', 'text-anchor': 'middle' }, 'no data yet'));
  }
  chart.append(svg('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }),
    svg('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }),
    svg('text', { x: (L + W - R) / 2, y: H - 4, class: 'tick', 'text-anchor': 'middle' }, xLabel));
  series.slice(0, 3).forEach((s, i) => {
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    const d = pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ');
    if (pts.length > 1) chart.append(svg('polyline', { points: d, class: `line series-${i}` }));
    for (const [x, y] of pts.length === 1 ? pts : []) chart.append(svg('circle', { cx: px(x), cy: py(y), r: 3, class: `dot series-${i}` }));
    const lx = L + 8 + i * 150;
    chart.append(svg('rect', { x: lx, y: 8, width: 12, height: 4, class: `key series-${i}` }),
      svg('text', { x: lx + 16, y: 14, class: 'legend' }, s.name));
  });
  return h('figure', { class: 'chart-figure' }, chart, h('figcaption', { class: 'visually-hidden' }, title));
}
