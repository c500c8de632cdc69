// models.js: the Models tab: the served model, its versions (with hot swap), training curves, per-class metrics, the confusion matrix and its photos, the training report.
import * as api from './api.js';
import { h, lazyImage, lineChart, num, pct } from './chart.js';

const $ = (id) => document.getElementById(id);
const MAX_CELL_PHOTOS = 500;
const metricText = (name, value) => {
  if (/accuracy|top\d|precision|recall|f1/i.test(name) && value <= 1) return pct(value);
  return num(value, Number.isInteger(value) ? 0 : 3);
};

function dl(entries) {
  return h('dl', { class: 'facts' }, entries.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));
}

export function initModels(ctx) {
  const tbody = $('versions').tBodies[0];
  const detail = $('version-detail');
  let versions = null;
  let reportUrl = null;

  function showModel(model) {
    if (!model) return;
    const metrics = Object.entries(model.metrics || {}).map(([k, v]) => `${k} ${metricText(k, v)}`).join(' · ');
    $('model-info').replaceChildren(dl([
      ['Name', model.name], ['Version', h('span', { class: 'mono' }, model.version)], ['Architecture', model.architecture],
      ['Engine', model.engine], ['Source', h('span', { class: 'mono' }, model.source ?? '')], ['Created', model.created],
      ['Loaded', model.loaded_at], ['Input', model.input ? `${model.input.image_size} px, crop ${model.input.crop_fraction}` : null],
      ['Metrics', metrics || 'none recorded'],
      ['Dataset', model.dataset ? `${model.dataset.url ?? ''} (${num(model.dataset.train)} training, ${num(model.dataset.validation)} validation photos)` : 'not recorded'],
      ['Classes', h('ul', { class: 'chips' }, (model.classes || []).map((c) => h('li', { class: 'chip static' }, c)))],
    ]));
  }

  async function loadVersions() {
    const model = ctx.model;
    if (!model) return;
    try {
      versions = await api.getJSON(`/v1/models/${encodeURIComponent(model.name)}/versions`);
    } catch (error) {
      tbody.replaceChildren(h('tr', {}, h('td', { colspan: '6', class: 'error' }, error.message)));
      return;
    }
    $('serving-mode').textContent = versions.pinned
      ? `Serving ${versions.serving}, pinned (latest is ${versions.latest ?? 'unknown'}).`
      : `Serving ${versions.serving}${versions.follows_latest ? ', following the latest version' : ''}.`;
    $('follow-latest').hidden = !(versions.pinned && versions.latest);
    tbody.replaceChildren(...versions.versions.map((v) => {
      const metrics = Object.entries(v.metrics || {}).filter(([k]) => k.startsWith('validation_'))
        .map(([k, x]) => `${k.slice(11).replace(/_/g, ' ')} ${metricText(k, x)}`).join(', ');
      return h('tr', { dataset: { version: v.version }, class: v.serving ? 'serving' : '' },
        h('th', { scope: 'row', class: 'mono' }, v.version, v.serving ? h('span', { class: 'badge' }, 'serving') : null),
        h('td', {}, v.created ?? ''), h('td', {}, v.architecture ?? ''), h('td', {}, num(v.classes)), h('td', {}, metrics || '–'),
        h('td', { class: 'row' },
          h('button', { type: 'button', dataset: { testid: 'show-version' }, onclick: () => showVersion(v.version) }, 'Details'),
          h('button', { type: 'button', dataset: { testid: 'serve-version' }, disabled: v.serving, onclick: () => serve(v.version) }, 'Serve this version')));
    }));
    const wanted = detail.dataset.version && versions.versions.some((v) => v.version === detail.dataset.version)
      ? detail.dataset.version : versions.serving;
    if (wanted && detail.dataset.version !== wanted) showVersion(wanted);
  }

  async function serve(version) {
    const name = ctx.model.name;
    const what = version === 'latest' ? 'follow the latest version again' : `serve version ${version}`;
    if (!confirm(`Swap the model: ${name} will ${what}. Requests in flight finish on the old version.`)) return;
    const outcome = $('serve-outcome');
    outcome.className = '';
    outcome.textContent = 'Swapping…';
    try {
      const answer = await api.postJSON(`/admin/models/${encodeURIComponent(name)}/serve`, { version });
      outcome.textContent = answer.swapped
        ? `Now serving ${answer.current} (was ${answer.previous ?? 'none'}).`
        : `Already serving ${answer.current}.`;
      await ctx.refreshModel();
      await loadVersions();
    } catch (error) {
      outcome.className = 'error';
      outcome.textContent = `Not swapped: ${error.message}`;
    }
  }
  $('follow-latest').addEventListener('click', () => serve('latest'));

  function historyCharts(history) {
    const box = $('history-charts');
    box.replaceChildren();
    if (!history?.length) return;
    const first = (history[0].epoch ?? 0) === 0 ? 1 : 0; // shown from 1; metrics.jsonl counts from 0
    const x = (row, i) => (row.epoch ?? i) + first;
    const keys = [...new Set(history.flatMap((row) => Object.keys(row)))]
      .filter((k) => k !== 'epoch' && history.some((row) => typeof row[k] === 'number'));
    const series = (names) => names.map((k) => ({ name: k.replace(/_/g, ' '), points: history.map((row, i) => [x(row, i), row[k]]) }));
    const loss = keys.filter((k) => /loss/.test(k)).slice(0, 3);
    const accuracy = keys.filter((k) => /accuracy/.test(k)).slice(0, 3);
    if (loss.length) box.append(lineChart({ title: 'Loss per epoch', series: series(loss), xLabel: 'epoch' }));
    if (accuracy.length) {
      box.append(lineChart({ title: 'Accuracy per epoch', series: series(accuracy), xLabel: 'epoch', yMin: 0, yMax: 1, yFormat: (v) => `${Math.round(v * 100)}%` }));
    }
  }

  function classTable(evaluation) {
    const head = h('thead', {}, h('tr', {}, ['Class', 'Precision', 'Recall', 'F1', 'Photos'].map((t) => h('th', { scope: 'col' }, t))));
    const body = h('tbody', {}, evaluation.classes.map((c) => h('tr', {},
      h('th', { scope: 'row' }, c.name), h('td', {}, pct(c.precision)), h('td', {}, pct(c.recall)), h('td', {}, pct(c.f1)), h('td', {}, num(c.support)))));
    $('class-metrics').replaceChildren(head, body);
  }

  function confusion(detailInfo) {
    const { classes, evaluation, name, version } = detailInfo;
    const matrix = evaluation.confusion;
    const head = h('thead', {}, h('tr', {}, h('th', { scope: 'col', class: 'corner' }, 'true ↓ predicted →'),
      classes.map((c) => h('th', { scope: 'col', class: 'col-head' }, h('span', {}, c)))));
    const rows = matrix.map((row, t) => {
      const total = row.reduce((a, b) => a + b, 0) || 1;
      return h('tr', {}, h('th', { scope: 'row' }, classes[t]), row.map((count, p) => {
        const cell = h('button', {
          type: 'button', class: t === p ? 'confusion-cell diagonal' : 'confusion-cell',
          'aria-label': `true ${classes[t]} predicted ${classes[p]}: ${count} photo${count === 1 ? '' : 's'}`,
          dataset: { testid: 'confusion-cell', true: classes[t], predicted: classes[p], count: String(count) },
          onclick: () => cellPhotos(detailInfo, classes[t], classes[p], count),
        }, String(count));
        cell.style.setProperty('--shade', (count / total).toFixed(3));
        return h('td', {}, cell);
      }));
    });
    $('confusion').replaceChildren(h('caption', { class: 'visually-hidden' }, `Confusion matrix of ${name} ${version}`), head, h('tbody', {}, rows));
  }

  function cellPhotos({ evaluation, name, version }, trueLabel, predicted, count) {
    const photos = (evaluation.predictions || []).filter((p) => p.true_label === trueLabel && p.predicted_label === predicted);
    const title = $('cell-title');
    title.hidden = false;
    title.textContent = `True ${trueLabel}, predicted ${predicted}: ${count} photo${count === 1 ? '' : 's'}`
      + (photos.length > MAX_CELL_PHOTOS ? ` (the first ${MAX_CELL_PHOTOS} shown)` : '');
    $('cell-photos').replaceChildren(...photos.slice(0, MAX_CELL_PHOTOS).map((p) => h('li', { class: 'gallery-item', dataset: { testid: 'cell-photo', id: p.id } },
      lazyImage(`${p.id}: true ${p.true_label}, predicted ${p.predicted_label}`, () => api.thumbnailUrl(p.id, { size: 160, model: name, version })),
      h('p', { class: 'gallery-caption' }, h('span', { class: 'score' }, pct(p.score))),
      h('p', { class: 'gallery-key mono', title: p.id }, p.id.split('/').pop()))));
    title.scrollIntoView({ block: 'nearest' });
  }

  async function showReport(name, version) {
    const frame = $('report-frame');
    const path = `/v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/report`;
    if (!api.authRequired()) {
      frame.src = path; // served with its own sandboxing policy
    } else {
      // Behind a key: fetched with it and shown from a blob URL (the page's policy then applies).
      try {
        const html = await api.request(path, { as: 'text' });
        if (reportUrl) URL.revokeObjectURL(reportUrl);
        reportUrl = URL.createObjectURL(new Blob([html], { type: 'text/html' }));
        frame.src = reportUrl;
      } catch (error) {
        ctx.status(`Report: ${error.message}`, 'error');
        return;
      }
    }
    frame.hidden = false;
  }

  async function showVersion(version) {
    const name = ctx.model.name;
    detail.dataset.version = version;
    detail.hidden = false;
    $('version-title').textContent = `${name} ${version}`;
    let info;
    try {
      info = await api.getJSON(`/v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);
    } catch (error) {
      $('no-evaluation').hidden = false;
      $('no-evaluation').textContent = `Cannot read this version: ${error.message}`;
      return;
    }
    if (detail.dataset.version !== version) return;
    $('report-frame').hidden = true;
    $('report-row').hidden = !info.report;
    $('open-report').onclick = () => showReport(name, version);
    historyCharts(info.history);
    const evaluation = info.evaluation;
    $('evaluation').hidden = !evaluation;
    $('no-evaluation').hidden = Boolean(evaluation);
    $('cell-title').hidden = true;
    $('cell-photos').replaceChildren();
    if (!evaluation) {
      $('no-evaluation').textContent = info.history?.length
        ? 'This version has no evaluation of validation photos.'
        : 'This version has no evaluation and no training history (the built-in model ships without its training photos).';
      return;
    }
    $('evaluation-summary').textContent = `${num(evaluation.images)} validation photos: top-1 ${pct(evaluation.top1)}, top-5 ${pct(evaluation.top5)}.`;
    classTable(evaluation);
    confusion({ ...info, name, version });
  }

  ctx.onModel((model) => { showModel(model); if (!$('panel-models').hidden) loadVersions(); });
  return {
    show() { showModel(ctx.model); loadVersions(); },
    refresh() { loadVersions(); },
  };
}
