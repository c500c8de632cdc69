// main.js: the console's entry module: tabs, the served model in the header, the API key prompt, and wiring of the four views.
/*
 * Stable hooks for tests (tests/system/test_console.py) and for people scripting the page:
 *   header     #model-name, #model-version, #status (messages), #forget-key, a[href="/docs"]
 *   tabs       #tab-classify #tab-bucket #tab-models #tab-usage (role=tab, aria-selected);
 *              panels #panel-classify #panel-bucket #panel-models #panel-usage; also #classify etc. in the URL
 *   key        #key-dialog (open = prompt shown), #key-form, #api-key, #api-key-submit, #key-message
 *   classify   #drop-zone, #file-input, #top-k, #webcam-button, #clear-results, #results;
 *              cards [data-testid=result-card] with data-state=pending|done|error, data-label (top label),
 *              data-total-ms, data-unknown; inside: [data-testid=result-label], [data-testid=bar] (one per
 *              label, data-label), [data-testid=unknown-badge], [data-testid=result-error],
 *              [data-testid=copy-curl] (button), [data-testid=curl-text] (the command),
 *              [data-testid=explain-toggle] (aria-pressed; the photo's img gets data-explained=true
 *              and the card data-explained-label when the heat map is shown)
 *   bucket     #bucket-mode-photos, #bucket-mode-results, #bucket-prefix, #bucket-open, #label-filter,
 *              #low-confidence, #max-score, #breadcrumb, #folders ([data-testid=folder-chip] data-prefix),
 *              #label-counts ([data-testid=count-chip] data-label data-count), #gallery-status (data-total,
 *              data-matching in results mode), #gallery ([data-testid=gallery-item] data-key data-label
 *              data-score, img.thumb loaded when src starts with blob:), #load-more,
 *              #photo-dialog ([data-testid=photo-large], #photo-topk, #photo-close)
 *   models     #model-info, #versions (rows tr[data-version], [data-testid=show-version],
 *              [data-testid=serve-version]), #follow-latest, #serve-outcome, #version-detail (data-version),
 *              #history-charts, #no-evaluation, #class-metrics, #confusion ([data-testid=confusion-cell]
 *              data-true data-predicted data-count), #cell-title, #cell-photos ([data-testid=cell-photo]),
 *              #open-report, #report-frame
 *   usage      #usage-stats: [data-testid=usage-<name>] with data-value (raw number) for images-per-second,
 *              p50, p90, p99, queue-depth, requests, images-classified, cpu-per-image, cost-per-1000,
 *              cost, memory; #usage-charts, #usage-labels, #usage-updated
 */
import * as api from './api.js';
import { initClassify } from './classify.js';
import { initBucket } from './bucket.js';
import { initModels } from './models.js';
import { initUsage } from './usage.js';

const $ = (id) => document.getElementById(id);
const statusLine = $('status');

/** Shared by the views: the served model, a status line, and a hook for model changes. */
const ctx = {
  model: null,
  listeners: [],
  onModel(fn) { this.listeners.push(fn); if (this.model) fn(this.model); },
  status(message, kind = 'info') {
    statusLine.textContent = message;
    statusLine.dataset.kind = kind;
  },
  async refreshModel() {
    try {
      const { models } = await api.getJSON('/v1/models');
      this.model = models[0] || null;
      $('model-name').textContent = this.model?.name ?? 'no model';
      $('model-version').textContent = this.model?.version ?? '';
      this.listeners.forEach((fn) => fn(this.model));
      if (statusLine.dataset.kind === 'auth') this.status('');
    } catch (error) {
      $('model-name').textContent = '?';
      if (error.status !== 401) this.status(`Cannot read the model: ${error.message}`, 'error');
    }
    return this.model;
  },
};

const views = {
  classify: initClassify(ctx),
  bucket: initBucket(ctx),
  models: initModels(ctx),
  usage: initUsage(ctx),
};
const tabs = [...document.querySelectorAll('[role="tab"]')];
let active = null;

function select(name, { focus = false } = {}) {
  if (!views[name] || name === active) return;
  for (const tab of tabs) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute('aria-controls')).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (active) views[active].hide?.();
  active = name;
  views[name].show?.();
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
}

tabs.forEach((tab, index) => {
  tab.addEventListener('click', () => select(tab.id.slice(4)));
  tab.addEventListener('keydown', (event) => {
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = tabs[(moves[event.key] + tabs.length) % tabs.length];
    select(next.id.slice(4), { focus: true });
  });
});
window.addEventListener('hashchange', () => select(location.hash.slice(1)));

// The API key: asked for on a 401, kept in sessionStorage, sent by api.js on every request.
const keyDialog = $('key-dialog');
api.onUnauthorized((error) => {
  $('key-message').textContent = api.getKey()
    ? `The server refused the key (${error.message}). Enter another one.`
    : 'This server needs an API key. It is kept in this tab only (session storage).';
  ctx.status('An API key is needed: enter it to continue.', 'auth');
  if (!keyDialog.open) keyDialog.showModal();
  $('api-key').focus();
});
$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  api.setKey($('api-key').value.trim());
  $('api-key').value = '';
  keyDialog.close();
  $('forget-key').hidden = !api.getKey();
  ctx.status('');
  ctx.refreshModel().then(() => views[active]?.refresh?.());
});
$('api-key-cancel').addEventListener('click', () => keyDialog.close());
$('forget-key').hidden = !api.getKey();
$('forget-key').addEventListener('click', () => {
  api.setKey('');
  $('forget-key').hidden = true;
  ctx.status('The API key is forgotten.');
});

select(views[location.hash.slice(1)] ? location.hash.slice(1) : 'classify');
ctx.refreshModel();
