// usage.js: the Usage tab: polls GET /v1/usage every 2 s while visible; throughput, latency, queue, cost and memory, with live charts.
import * as api from './api.js';
import { bars, h, lineChart, ms, num } from './chart.js';

const INTERVAL_MS = 2000;
const WINDOW_S = 300; // the charts show the last five minutes
const $ = (id) => document.getElementById(id);

const STATS = [
  ['images-per-second', 'Images/s', (u) => u.recent?.images_per_second, (v) => num(v, 2)],
  ['p50', 'Latency p50', (u) => u.recent?.latency_ms?.p50, ms],
  ['p90', 'Latency p90', (u) => u.recent?.latency_ms?.p90, ms],
  ['p99', 'Latency p99', (u) => u.recent?.latency_ms?.p99, ms],
  ['queue-depth', 'Queue depth', (u) => u.recent?.queue_depth, (v) => num(v)],
  ['requests', 'Requests', (u) => u.requests, (v) => num(v)],
  ['images-classified', 'Images classified', (u) => u.images_classified, (v) => num(v)],
  ['cpu-per-image', 'CPU-seconds per image', (u) => u.cpu_seconds_per_image, (v) => num(v, 4)],
  ['cost-per-1000', 'Cost per 1,000 images', (u) => u.cost_per_1000_images_usd, (v) => `$${num(v, 4)}`],
  ['cost', 'CPU cost so far', (u) => u.estimated_cost_usd, (v) => `$${num(v, 4)}`],
  ['instance-cost', 'Instance cost so far', (u) => u.instance_cost_usd, (v) => `$${num(v, 4)}`],
  ['capacity-used', 'Capacity used', (u) => u.capacity_used, (v) => `${num(100 * v, 1)}%`],
  ['memory', 'Memory (resident)', (u) => u.resident_memory_bytes, (v) => `${num(v / 2 ** 20, 1)} MiB`],
];

export function initUsage(ctx) {
  const samples = [];
  let timer = null;
  let shown = false;
  const cells = new Map();

  $('usage-stats').replaceChildren(...STATS.map(([id, label]) => {
    const dd = h('dd', { id: `usage-${id}`, dataset: { testid: `usage-${id}` } }, '–');
    cells.set(id, dd);
    return h('div', { class: 'stat' }, h('dt', {}, label), dd);
  }));

  function render(usage) {
    for (const [id, , read, format] of STATS) {
      const value = read(usage);
      const cell = cells.get(id);
      cell.textContent = value === null || value === undefined ? '–' : format(value);
      cell.dataset.value = value === null || value === undefined ? '' : String(value);
    }
    const now = performance.now() / 1000;
    samples.push({ t: now, ips: usage.recent?.images_per_second ?? 0, p90: usage.recent?.latency_ms?.p90 ?? null });
    while (samples.length && samples[0].t < now - WINDOW_S) samples.shift();
    const ago = (s) => s.t - now;
    $('usage-charts').replaceChildren(
      lineChart({ title: 'Images per second, last 5 minutes', xLabel: 'seconds ago', series: [{ name: 'images/s', points: samples.map((s) => [ago(s), s.ips]) }], xFormat: (v) => num(Math.abs(v)) }),
      lineChart({ title: 'p90 latency, last 5 minutes', xLabel: 'seconds ago', series: [{ name: 'p90 ms', points: samples.filter((s) => s.p90 !== null).map((s) => [ago(s), s.p90]) }], xFormat: (v) => num(Math.abs(v)), yFormat: (v) => num(v) }));
    const labels = Object.entries(usage.images_by_label || {}).sort((a, b) => b[1] - a[1]);
    $('usage-labels').replaceChildren(labels.length
      ? bars(labels.map(([label, value]) => ({ label, value })), { format: (v) => num(v), testid: 'usage-label' })
      : h('p', { class: 'muted' }, 'No images classified yet.'));
    $('usage-updated').textContent = `Updated ${new Date().toLocaleTimeString()} · up ${num(usage.uptime_seconds / 60, 1)} min · `
      + `${num(usage.batches)} batches, mean batch ${num(usage.mean_batch_size, 2)} · at $${num(usage.cost_per_vcpu_hour_usd, 4)} per vCPU-hour`;
  }

  let busy = false;
  async function poll() {
    timer = null;
    if (busy || !shown || document.visibilityState !== 'visible') return;
    busy = true;
    let again = true;
    try {
      render(await api.getJSON('/v1/usage'));
    } catch (error) {
      $('usage-updated').textContent = `Cannot read usage: ${error.message}`;
      again = error.status !== 401; // polled again once a key is entered
    } finally {
      busy = false;
    }
    if (again && shown && !timer && document.visibilityState === 'visible') timer = setTimeout(poll, INTERVAL_MS);
  }

  const start = () => { if (!timer) poll(); };
  const stop = () => { clearTimeout(timer); timer = null; };
  document.addEventListener('visibilitychange', () => (document.visibilityState === 'visible' && shown ? start() : stop()));

  return {
    show() { shown = true; start(); },
    hide() { shown = false; stop(); },
    refresh() { stop(); start(); },
  };
}
