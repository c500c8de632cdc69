// api.js: fetch wrapper for the Bestiary API (same origin, Bearer key from sessionStorage, JSON errors thrown, thumbnail blob URLs).

const KEY_NAME = 'bestiary-api-key';
const THUMBNAIL_CACHE_SIZE = 400;
let unauthorizedHandler = () => {};
let sawUnauthorized = false;

/** An error answer of the API: `message` is its `error`, with the HTTP status and `error_type`. */
export class ApiError extends Error {
  constructor(message, status, type, body) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.type = type;
    this.body = body;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || '';
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
  clearThumbnails();
}

/** Whether this server asks for a key (it answered 401, or a key was entered). */
export function authRequired() {
  return sawUnauthorized || getKey() !== '';
}

/** Called with the ApiError of every 401 answer (the page then asks for a key). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/** `path` with the query parameters that are set (null, undefined and '' are left out). */
export function withQuery(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * One request to the API. `as`: 'json' (default), 'text', 'blob' or 'response'.
 * Throws ApiError for an error answer, with the server's JSON `error` as the message.
 */
export async function request(path, { method = 'GET', body, headers = {}, as = 'json', signal } = {}) {
  const sent = new Headers(headers);
  const key = getKey();
  if (key) sent.set('Authorization', `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { method, body, headers: sent, signal, credentials: 'same-origin' });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(`the server cannot be reached (${error.message})`, 0, 'network', null);
  }
  if (!response.ok) {
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      // not JSON: keep the status line
    }
    const message = answer?.error || `HTTP ${response.status} ${response.statusText}`;
    const error = new ApiError(message, response.status, answer?.error_type || 'http', answer);
    if (response.status === 401) {
      sawUnauthorized = true;
      unauthorizedHandler(error);
    }
    throw error;
  }
  if (as === 'json') return response.json();
  if (as === 'text') return response.text();
  if (as === 'blob') return response.blob();
  return response;
}

export const getJSON = (path, params, options) => request(withQuery(path, params), options);

export function postJSON(path, value) {
  return request(path, {
    method: 'POST',
    body: JSON.stringify(value),
    headers: { 'Content-Type': 'application/json' },
  });
}

// Thumbnails: fetched with the key (never in the URL), shown as blob URLs; the oldest are revoked.
const thumbnails = new Map();

/**
 * A blob URL of the thumbnail of bucket key `key` (or, with `model` and `version`, of that
 * version's evaluation photo `key`), the longer side at most `size` pixels.
 */
export function thumbnailUrl(key, { size = 256, model, version } = {}) {
  const path = withQuery('/v1/thumbnail', { key, size, model, version });
  const cached = thumbnails.get(path);
  if (cached) {
    thumbnails.delete(path);
    thumbnails.set(path, cached); // most recently used last
    return cached;
  }
  const pending = request(path, { as: 'blob' }).then((blob) => URL.createObjectURL(blob));
  pending.catch(() => thumbnails.delete(path));
  thumbnails.set(path, pending);
  while (thumbnails.size > THUMBNAIL_CACHE_SIZE) {
    const [oldest, url] = thumbnails.entries().next().value;
    thumbnails.delete(oldest);
    url.then((u) => URL.revokeObjectURL(u), () => {});
  }
  return pending;
}

function clearThumbnails() {
  for (const url of thumbnails.values()) url.then((u) => URL.revokeObjectURL(u), () => {});
  thumbnails.clear();
}
