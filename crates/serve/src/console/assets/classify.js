// classify.js: the Classify tab: drop, pick, paste or capture photos; each is sent as its original bytes to POST /v1/classify and shown as a card.
import * as api from './api.js';
import { bars, h, ms, pct } from './chart.js';

const CONCURRENCY = 3;
const $ = (id) => document.getElementById(id);

/** The shell-quoted curl command that sends `file` as this page did (never the key itself). */
export function curlCommand(file, topK) {
  const quote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
  const url = `${location.origin}/v1/classify?top_k=${topK}`;
  const parts = ['curl -sS -X POST', quote(url), '-H', quote(`Content-Type: ${file.type || 'application/octet-stream'}`)];
  if (api.authRequired()) parts.push('-H', `"Authorization: Bearer $BESTIARY_API_KEY"`);
  const name = file.name || 'photo.jpg';
  parts.push('--data-binary', `@${/^[\w.,+@%=-]+$/.test(name) ? name : quote(name)}`);
  return parts.join(' ');
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard permission (plain http, headless): copy through a selected text area.
    const area = h('textarea', { class: 'visually-hidden', 'aria-hidden': 'true' }, text);
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  button.textContent = 'Copied';
  setTimeout(() => { button.textContent = 'Copy as curl'; }, 1500);
}

export function initClassify(ctx) {
  const zone = $('drop-zone');
  const input = $('file-input');
  const list = $('results');
  const topK = $('top-k');
  const queue = [];
  let running = 0;
  let shown = false;

  function card(file) {
    const preview = URL.createObjectURL(file);
    const photo = h('img', { src: preview, dataset: { preview }, alt: `Photo ${file.name || ''}`, class: 'card-photo', onerror: (e) => e.target.replaceWith(h('span', { class: 'no-preview card-photo' }, 'no preview')) });
    const curl = curlCommand(file, topK.value);
    const copy = h('button', { type: 'button', dataset: { testid: 'copy-curl' } }, 'Copy as curl');
    copy.addEventListener('click', () => copyText(curl, copy));
    const body = h('div', { class: 'card-body' }, h('p', { class: 'muted' }, 'Classifying…'));
    const node = h('li', { class: 'card', dataset: { testid: 'result-card', state: 'pending', name: file.name || '' } },
      photo,
      h('div', { class: 'card-main' },
        h('p', { class: 'card-name mono', title: file.name }, file.name || 'pasted photo'),
        body,
        h('p', { class: 'row' }, copy),
        h('details', {}, h('summary', {}, 'curl'), h('pre', {}, h('code', { dataset: { testid: 'curl-text' } }, curl)))));
    list.prepend(node);
    return { node, body, photo, file, preview };
  }

  /**
   * The "Where it looked" toggle: the first press asks POST /v1/explain for the heat map of the
   * shown label over this photo and puts it in place of the photo; later presses switch back and
   * forth. Absent when the served model has no class activation maps.
   */
  function explainToggle(view, label) {
    if (!ctx.model?.explanations) return null;
    const button = h('button', { type: 'button', 'aria-pressed': 'false', dataset: { testid: 'explain-toggle' } }, 'Where it looked');
    let overlay = null;
    button.addEventListener('click', async () => {
      const on = button.getAttribute('aria-pressed') !== 'true';
      if (on && !overlay) {
        button.disabled = true;
        button.textContent = 'Looking…';
        try {
          const answer = await api.request(api.withQuery('/v1/explain', label ? { label } : {}), {
            method: 'POST',
            body: view.file,
            headers: { 'Content-Type': view.file.type || 'application/octet-stream' },
          });
          overlay = `data:image/png;base64,${answer.overlay_png_base64}`;
          view.node.dataset.explainedLabel = answer.label;
        } catch (error) {
          button.disabled = false;
          if (error.status === 409) { button.remove(); } else { button.textContent = 'Where it looked'; }
          ctx.status(`No explanation: ${error.message}`, 'error');
          return;
        }
        button.disabled = false;
      }
      button.setAttribute('aria-pressed', String(on));
      button.textContent = on ? 'Show the photo' : 'Where it looked';
      view.photo.src = on ? overlay : view.preview;
      view.photo.dataset.explained = String(on);
    });
    return button;
  }

  function showResult(view, answer, totalMs) {
    const { node, body } = view;
    const p = answer.predictions[0];
    node.dataset.state = 'done';
    node.dataset.label = p.label;
    node.dataset.totalMs = totalMs.toFixed(1);
    node.dataset.unknown = String(Boolean(p.unknown));
    const timing = p.timing || {};
    const toggle = explainToggle(view, p.unknown ? null : p.label);
    body.replaceChildren(
      h('p', { class: 'card-label' },
        h('strong', { dataset: { testid: 'result-label' } }, p.unknown ? 'not one of the model\'s classes' : p.label),
        ' ', h('span', { class: 'score' }, pct(p.score)),
        p.unknown ? h('span', { class: 'badge warn', dataset: { testid: 'unknown-badge' } }, 'unknown') : null),
      bars(p.top_k || []),
      h('p', { class: 'muted small' },
        `${p.model} ${p.version} · ${ms(totalMs)} in the browser · ${ms(timing.inference_ms)} inference`,
        h('span', { title: 'preprocess, queue' }, ` (+${ms(timing.preprocess_ms)}, ${ms(timing.queue_ms)} queued)`),
        p.width ? ` · ${p.width}×${p.height}` : ''),
      ...(toggle ? [h('p', { class: 'row' }, toggle)] : []));
  }

  function showError({ node, body }, error) {
    node.dataset.state = 'error';
    const retry = error.status === 429 ? ' (the server is busy: try again in a moment)' : '';
    body.replaceChildren(h('p', { class: 'error', role: 'alert', dataset: { testid: 'result-error' } },
      `${error.message}${retry}`, error.status ? h('span', { class: 'muted' }, ` (HTTP ${error.status})`) : null));
  }

  async function classify(file, view) {
    const started = performance.now();
    try {
      const answer = await api.request(api.withQuery('/v1/classify', { top_k: topK.value }), {
        method: 'POST',
        body: file, // the original bytes: never re-encoded
        headers: { 'Content-Type': file.type || 'application/octet-stream' },
      });
      showResult(view, answer, performance.now() - started);
    } catch (error) {
      showError(view, error);
    }
  }

  function pump() {
    while (running < CONCURRENCY && queue.length) {
      const [file, view] = queue.shift();
      running += 1;
      classify(file, view).finally(() => { running -= 1; pump(); });
    }
  }

  function add(files) {
    for (const file of files) queue.push([file, card(file)]);
    pump();
  }

  input.addEventListener('change', () => { add([...input.files]); input.value = ''; });
  zone.addEventListener('click', (event) => {
    if (event.target === zone || event.target.tagName === 'P') input.click();
  });
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    add([...(event.dataTransfer?.files || [])]);
  });
  document.addEventListener('paste', (event) => {
    if (!shown) return;
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) { event.preventDefault(); add(files); }
  });
  $('clear-results').addEventListener('click', () => {
    // A card showing its heat map keeps its photo's URL in data-preview.
    for (const img of list.querySelectorAll('img')) URL.revokeObjectURL(img.dataset.preview || img.src);
    list.replaceChildren();
  });

  // Webcam: a frame of the video drawn to a canvas, sent as a JPEG (quality 0.92).
  const camButton = $('webcam-button');
  const camDialog = $('webcam-dialog');
  const video = $('webcam-video');
  let stream = null;
  camButton.hidden = !navigator.mediaDevices?.getUserMedia;
  camButton.addEventListener('click', async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
      video.srcObject = stream;
      camDialog.showModal();
    } catch (error) {
      ctx.status(`The webcam is not available: ${error.message}`, 'error');
    }
  });
  const stop = () => { stream?.getTracks().forEach((t) => t.stop()); stream = null; video.srcObject = null; };
  camDialog.addEventListener('close', stop);
  $('webcam-close').addEventListener('click', () => camDialog.close());
  $('webcam-capture').addEventListener('click', () => {
    const canvas = h('canvas', { width: video.videoWidth, height: video.videoHeight });
    canvas.getContext('2d').drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (blob) add([new File([blob], `webcam-${Date.now()}.jpg`, { type: 'image/jpeg' })]);
    }, 'image/jpeg', 0.92);
  });

  return {
    show() { shown = true; },
    hide() { shown = false; },
  };
}
