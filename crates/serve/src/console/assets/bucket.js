// bucket.js: the Bucket tab: a paged, lazily loaded gallery of the bucket's photos or of a classify run's results, filtered by label and confidence.
import * as api from './api.js';
import { bars, h, lazyImage, num, pct } from './chart.js';

const PAGE = 48; // items asked for per request
const MAX_PAGES = 5; // requests one "load more" makes through a filter before it waits for the user
const $ = (id) => document.getElementById(id);
const basename = (key) => key.split('/').filter(Boolean).pop() || key;

export function initBucket(ctx) {
  const gallery = $('gallery');
  const loadButton = $('load-more');
  const statusLine = $('gallery-status');
  const prefixInput = $('bucket-prefix');
  const labelSelect = $('label-filter');
  const lowConfidence = $('low-confidence');
  const maxScore = $('max-score');
  const countsList = $('label-counts');
  const dialog = $('photo-dialog');
  const s = { mode: 'photos', prefix: '', next: null, done: true, loading: false, gen: 0, shown: 0, scanned: 0, counts: {}, prefixes: { photos: '', results: '' } };
  let opened = false;

  const filters = () => ({
    label: labelSelect.value,
    max_score: lowConfidence.checked && maxScore.value !== '' ? maxScore.value : null,
  });

  function setLabelOptions(labels) {
    const current = labelSelect.value;
    const all = [...new Set([...labels, ...(current ? [current] : [])])];
    labelSelect.replaceChildren(h('option', { value: '' }, 'All labels'),
      ...all.map((label) => h('option', { value: label }, label)));
    labelSelect.value = current;
  }

  function breadcrumb(prefix) {
    const parts = prefix.split('/').filter(Boolean);
    const crumb = (text, target, current) => h('li', {},
      current ? h('span', { 'aria-current': 'location' }, text)
        : h('button', { type: 'button', class: 'link', onclick: () => open(target) }, text));
    $('breadcrumb').replaceChildren(crumb('bucket root', '', parts.length === 0),
      ...parts.map((part, i) => crumb(part, `${parts.slice(0, i + 1).join('/')}/`, i === parts.length - 1)));
  }

  async function loadFolders(prefix, gen) {
    const list = $('folders');
    list.replaceChildren();
    try {
      const answer = await api.getJSON('/v1/bucket/folders', { prefix });
      if (gen !== s.gen) return;
      $('bucket-name').textContent = `Bucket: ${answer.bucket}`;
      list.replaceChildren(...answer.folders.map((folder) => h('li', {},
        h('button', { type: 'button', class: 'chip', dataset: { testid: 'folder-chip', prefix: folder }, onclick: () => open(folder) },
          `${basename(folder)}/`))));
      if (answer.truncated) list.append(h('li', { class: 'muted' }, 'more folders: type a longer prefix'));
    } catch (error) {
      if (gen === s.gen && error.status !== 401) ctx.status(`Folders: ${error.message}`, 'error');
    }
  }

  // The audit `bestiary dataset audit <folder> --out <folder>` left in this folder, when there
  // is one; its keys are relative to the audited folder.
  const inFolder = (prefix, key) => `${prefix.replace(/\/+$/, '')}${prefix ? '/' : ''}${key}`;
  const AUDIT_ROWS = 25;
  async function loadAudit(prefix, gen) {
    const panel = $('audit');
    panel.hidden = true;
    if (s.mode !== 'photos') return;
    let answer;
    try {
      answer = await api.getJSON('/v1/bucket/audit', { prefix });
    } catch (error) {
      if (gen === s.gen && error.status !== 404 && error.status !== 401) ctx.status(`Audit: ${error.message}`, 'error');
      return;
    }
    if (gen !== s.gen) return;
    const audit = answer.audit ?? {};
    const summary = audit.summary ?? {};
    const suspects = Array.isArray(audit.suspects) ? audit.suspects : [];
    $('audit-summary').textContent = [
      `${num(summary.photos ?? 0)} photos`,
      summary.cross_validated_accuracy != null ? `cross-validated accuracy ${pct(summary.cross_validated_accuracy)}` : null,
      `${num(summary.label_issues ?? 0)} probably mislabelled`,
      `${num(summary.unknown ?? 0)} none of the classes`,
      `${num((summary.exact_duplicate_groups ?? 0) + (summary.near_duplicate_groups ?? 0))} duplicate groups (${num(summary.leakage_groups ?? 0)} across train and validation)`,
      suspects.length > AUDIT_ROWS ? `the first ${AUDIT_ROWS} of ${num(suspects.length)} suspects below` : null,
    ].filter(Boolean).join(' · ');
    $('audit-suspects').replaceChildren(...suspects.slice(0, AUDIT_ROWS).map((suspect) => h('tr', { dataset: { testid: 'audit-suspect' } },
      h('td', {}, h('button', { type: 'button', class: 'link', onclick: () => openPhoto({ key: suspect.key, label: suspect.label }, inFolder(prefix, suspect.key)) }, String(suspect.key ?? ''))),
      h('td', {}, String(suspect.label ?? '')),
      h('td', {}, String(suspect.suggested_label ?? '')),
      h('td', {}, typeof suspect.score === 'number' ? suspect.score.toFixed(3) : ''),
      h('td', { title: String(suspect.detail ?? '') }, String(suspect.reason ?? '').replaceAll('_', ' ')))));
    panel.hidden = false;
  }

  function showCounts(answer) {
    s.counts = answer.counts || {};
    const entries = Object.entries(s.counts).sort((a, b) => b[1] - a[1]);
    countsList.replaceChildren(...entries.map(([label, count]) => h('li', {},
      h('button', {
        type: 'button', class: 'chip', 'aria-pressed': String(labelSelect.value === label),
        dataset: { testid: 'count-chip', label, count: String(count) },
        onclick: () => { labelSelect.value = labelSelect.value === label ? '' : label; reload(); },
      }, `${label} `, h('span', { class: 'count' }, num(count))))));
    countsList.hidden = false;
    setLabelOptions(entries.map(([label]) => label));
  }

  function item(it) {
    const thumbKey = s.mode === 'photos' ? it.key : it.bucket_key;
    const caption = it.error ? `error: ${it.error.code}` : it.unknown ? 'unknown' : it.label ?? 'not classified';
    const preview = thumbKey
      ? lazyImage(basename(it.key), () => api.thumbnailUrl(thumbKey, { size: 256 }))
      : h('span', { class: 'no-preview' }, 'outside the bucket');
    return h('li', { class: 'gallery-item', dataset: { testid: 'gallery-item', key: it.key, label: it.label ?? '', score: it.score ?? '' } },
      h('button', {
        type: 'button', class: 'thumb-button', title: it.error?.message ?? it.key,
        'aria-label': `${it.key}: ${caption}${it.score !== null && it.score !== undefined ? ` ${pct(it.score)}` : ''}`,
        onclick: () => openPhoto(it, thumbKey),
      }, preview),
      h('p', { class: 'gallery-caption' }, h('span', { class: it.error ? 'gallery-label error' : 'gallery-label' }, caption),
        ' ', h('span', { class: 'score' }, pct(it.score))),
      h('p', { class: 'gallery-key mono', title: it.key }, basename(it.key)));
  }

  function openPhoto(it, thumbKey) {
    $('photo-title').textContent = it.key;
    const img = $('photo-large');
    img.removeAttribute('src');
    img.alt = `${it.key}, predicted ${it.label ?? 'nothing'}`;
    img.hidden = !thumbKey;
    if (thumbKey) {
      api.thumbnailUrl(thumbKey, { size: 1024 }).then((url) => { if ($('photo-title').textContent === it.key) img.src = url; },
        (error) => { img.hidden = true; ctx.status(`Photo: ${error.message}`, 'error'); });
    }
    const extra = [];
    if (it.error) extra.push(h('p', { class: 'error' }, `${it.error.code}: ${it.error.message}`));
    if (it.url) extra.push(h('p', { class: 'mono small' }, it.url));
    if (it.model) extra.push(h('p', { class: 'muted small' }, `${it.model} ${it.model_version ?? ''}`));
    if (it.width) extra.push(h('p', { class: 'muted small' }, `${it.width}×${it.height} pixels${it.size ? `, ${num(it.size)} bytes` : ''}`));
    $('photo-topk').replaceChildren(bars(it.top_k || []), ...extra);
    if (!dialog.open) dialog.showModal();
  }
  $('photo-close').addEventListener('click', () => dialog.close());
  dialog.addEventListener('click', (event) => { if (event.target === dialog) dialog.close(); });

  async function fetchPage() {
    if (s.mode === 'photos') {
      const page = await api.getJSON('/v1/bucket/photos', { prefix: s.prefix, after: s.next, limit: PAGE, top_k: 3, ...filters() });
      s.scanned += page.scanned ?? 0;
      return { items: page.items, next: page.next_after ?? null };
    }
    const page = await api.getJSON('/v1/bucket/results', { prefix: s.prefix, offset: s.next ?? 0, limit: PAGE, ...filters() });
    if (s.next === null) showCounts(page);
    statusLine.dataset.total = String(page.total);
    statusLine.dataset.matching = String(page.matching);
    s.summary = `of ${num(page.matching)} matching · ${num(page.total)} results in ${num(page.parts)} part${page.parts === 1 ? '' : 's'}`;
    return { items: page.items, next: page.next_offset ?? null };
  }

  function showStatus() {
    const tail = s.mode === 'photos' ? `· ${num(s.scanned)} keys scanned` : s.summary ?? '';
    statusLine.textContent = `${num(s.shown)} photo${s.shown === 1 ? '' : 's'} shown ${tail}${s.done ? ' · the end' : ''}`;
    statusLine.dataset.shown = String(s.shown);
    statusLine.dataset.done = String(s.done);
    statusLine.dataset.loading = String(s.loading);
    loadButton.hidden = s.done;
    loadButton.disabled = s.loading;
  }

  async function loadMore({ auto = false } = {}) {
    if (s.loading || s.done) return;
    const gen = s.gen;
    s.loading = true;
    showStatus();
    let added = 0;
    let pages = 0;
    try {
      while (added < PAGE / 2 && !s.done && pages < MAX_PAGES) {
        const page = await fetchPage();
        if (gen !== s.gen) return;
        pages += 1;
        gallery.append(...page.items.map(item));
        added += page.items.length;
        s.shown += page.items.length;
        s.next = page.next;
        s.done = page.next === null;
      }
    } catch (error) {
      if (gen !== s.gen) return;
      s.loading = false;
      showStatus(); // "Load more" stays to try again
      statusLine.textContent = `Cannot list ${s.prefix || 'the bucket'}: ${error.message}`;
      return;
    }
    s.loading = false;
    showStatus();
    // Keep filling the screen while the end of the gallery is in view (unless a filter found nothing).
    if (!s.done && (added > 0 || !auto) && sentinelVisible()) requestAnimationFrame(() => loadMore({ auto: true }));
  }

  const sentinel = $('gallery-sentinel');
  const sentinelVisible = () => sentinel.getBoundingClientRect().top < innerHeight + 600 && !$('panel-bucket').hidden;
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore({ auto: true });
  }, { rootMargin: '600px' }).observe(sentinel);
  loadButton.addEventListener('click', () => loadMore());

  function reload() {
    s.gen += 1;
    Object.assign(s, { next: null, done: false, loading: false, shown: 0, scanned: 0, summary: '' });
    gallery.replaceChildren();
    delete statusLine.dataset.total;
    delete statusLine.dataset.matching;
    for (const chip of countsList.querySelectorAll('button')) chip.setAttribute('aria-pressed', String(chip.dataset.label === labelSelect.value));
    loadMore();
  }

  function open(prefix) {
    opened = true;
    s.prefix = prefix.trim().replace(/^\/+/, '');
    s.prefixes[s.mode] = s.prefix;
    prefixInput.value = s.prefix;
    breadcrumb(s.prefix);
    if (s.mode === 'results') countsList.replaceChildren();
    if (s.mode === 'results' && !s.prefix) {
      s.gen += 1;
      Object.assign(s, { done: true, loading: false });
      gallery.replaceChildren();
      loadButton.hidden = true;
      statusLine.dataset.loading = 'false';
      statusLine.textContent = 'Choose the folder a `bestiary classify --out` run wrote (or one .jsonl file) above.';
    } else {
      reload();
    }
    loadFolders(s.prefix, s.gen);
    loadAudit(s.prefix, s.gen);
  }

  $('bucket-form').addEventListener('submit', (event) => { event.preventDefault(); open(prefixInput.value); });
  for (const radio of document.querySelectorAll('input[name="bucket-mode"]')) {
    radio.addEventListener('change', () => {
      s.mode = radio.value;
      prefixInput.value = s.prefixes[s.mode];
      $('bucket-prefix-label').textContent = s.mode === 'photos' ? 'Prefix' : 'Results (.jsonl or folder)';
      countsList.hidden = s.mode === 'photos';
      labelSelect.value = '';
      setLabelOptions(s.mode === 'photos' ? ctx.model?.classes ?? [] : []);
      open(prefixInput.value);
    });
  }
  labelSelect.addEventListener('change', reload);
  lowConfidence.addEventListener('change', reload);
  maxScore.addEventListener('change', () => { if (lowConfidence.checked) reload(); });
  ctx.onModel((model) => { if (s.mode === 'photos') setLabelOptions(model?.classes ?? []); });

  return {
    show() { if (!opened) open(prefixInput.value); },
    refresh() { open(prefixInput.value); },
  };
}
