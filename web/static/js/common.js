// Shared helpers of the pages: messages, the JSON API, the citizen's token, sounds, DOM building.

const messagesElement = document.getElementById('messages');
const messages = messagesElement ? JSON.parse(messagesElement.textContent) : {};

/** A translated message with `{name}` placeholders filled in. */
export function t(key, params = {}) {
  const text = messages[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in params ? String(params[name]) : match));
}

const pluralRules = new Intl.PluralRules(document.documentElement.lang || 'de');

/** A translated plural message: `<key>.zero` for 0 (if there is one), else `<key>.<CLDR category>` of the
 * page's language (`one`, `other`, and `few`/`many` where a language has them), else `<key>.other`. */
export function tn(key, n, params = {}) {
  let id = `${key}.${pluralRules.select(n)}`;
  if (!(id in messages)) id = `${key}.other`;
  if (n === 0 && `${key}.zero` in messages) id = `${key}.zero`;
  return t(id, { ...params, n });
}

/** An estimated-wait range in words (mirror of server.i18n.estimate_text), or null with no estimate. */
export function estimateText(range) {
  if (!range) return null;
  const [low, high] = range;
  if (high <= 1) return t('range.soon');
  if (low === high) return t('range.same', { n: low });
  if (low === 0) return t('range.upto', { n: high });
  return t('range.span', { low, high });
}

const WEEKDAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

/** Year, month, day of `instant` on the calendar of `timeZone` (the municipality's, not the browser's). */
function calendarDay(instant, timeZone) {
  let parts;
  try {
    parts = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric' }).formatToParts(instant);
  } catch {
    parts = new Intl.DateTimeFormat('en-US', { year: 'numeric', month: 'numeric', day: 'numeric' }).formatToParts(instant);
  }
  const value = (type) => Number(parts.find((part) => part.type === type)?.value);
  return [value('year'), value('month'), value('day')];
}

/**
 * When something happens, from a local ISO time on the wire (`2026-12-01T08:00+01:00`): "heute um 14:00",
 * "morgen um 8:00", "Montag um 8:00" within a week, else "am 24.12. um 8:00". Mirror of
 * server.i18n.when_text; `timeZone` is the municipality's (its "today").
 */
export function whenText(iso, timeZone, now = new Date()) {
  const [date, clock] = iso.split('T');
  const [year, month, day] = date.split('-').map(Number);
  const [hour, minute] = clock.slice(0, 5).split(':').map(Number);
  const [ty, tm, td] = calendarDay(now, timeZone);
  const days = Math.round((Date.UTC(year, month - 1, day) - Date.UTC(ty, tm - 1, td)) / 86400000);
  const time = `${hour}:${String(minute).padStart(2, '0')}`;
  if (days <= 0) return t('when.today', { time });
  if (days === 1) return t('when.tomorrow', { time });
  if (days < 7) {
    const weekday = t(`weekday.${WEEKDAYS[new Date(Date.UTC(year, month - 1, day)).getUTCDay()]}`);
    return t('when.weekday', { weekday, time });
  }
  return t('when.date', { date: t('date_short', { day, month }), time });
}

/** What a closed department's card says about its next opening (null: nobody knows yet). */
export function openingText(iso, timeZone, now = new Date()) {
  return iso ? t('opens', { when: whenText(iso, timeZone, now) }) : t('opens_unknown');
}

/** The page's data block (`<script type="application/json" id="page-data">`). */
export function pageData() {
  const element = document.getElementById('page-data');
  return element ? JSON.parse(element.textContent) : {};
}

export class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
}

/** The form field a refusal for a control character names ("name contains a control character (U+202E)…"), or
 * null: the page then says `err.control_char` and marks that field. */
export function controlCharField(error) {
  if (error?.code !== 'invalid_input') return null;
  return /^(\w+) contains a control character/.exec(error.message || '')?.[1] ?? null;
}

/** What to tell a person about an error with a protocol `code`. */
export function errorMessage(error) {
  const code = error?.code;
  if (code === 'rate_limited' && error.retryAfter > 0) {
    // When a check-in is possible again, as a time of day (no plural to get wrong).
    const at = new Date(Date.now() + error.retryAfter * 1000);
    const time = at.toLocaleTimeString(document.documentElement.lang || undefined, { hour: 'numeric', minute: '2-digit' });
    return t('err.rate_limited_until', { time });
  }
  if (code && `err.${code}` in messages) return t(`err.${code}`);
  return error?.message || t('err.generic');
}

/**
 * Call the JSON API. Resolves to `{body, response}`; rejects with an ApiError carrying the protocol's
 * error code (`network` when the server could not be reached).
 */
export async function request(method, url, { body, token, csrf } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  if (csrf) headers['X-CSRF-Token'] = csrf;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError('network', t('err.network'));
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const error = payload?.error ?? {};
    const failure = new ApiError(error.code || 'generic', error.message, response.status);
    if (typeof error.retry_after === 'number') failure.retryAfter = error.retry_after;
    throw failure;
  }
  return { body: payload, response };
}

// -- the citizen's token --------------------------------------------------------------------------

const TOKEN_KEY = 'sps_token';

export function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the fragment still carries the token
  }
}

export function storeToken(token) {
  try {
    localStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* storage disabled */
  }
}

export function forgetToken(token) {
  try {
    if (token === undefined || localStorage.getItem(TOKEN_KEY) === token) localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled */
  }
}

export const FINAL_STATES = new Set(['done', 'left', 'no_show', 'expired', 'closed']);

/** The live ticket of the stored token, or null (a dead token is forgotten). */
export async function liveTicket() {
  const token = storedToken();
  if (!token) return null;
  try {
    const { body } = await request('GET', '/api/tickets/me', { token });
    if (body?.ticket && !FINAL_STATES.has(body.ticket.state)) return { token, ticket: body.ticket };
    forgetToken(token);
  } catch (error) {
    if (error.code === 'ticket_not_found') forgetToken(token);
  }
  return null;
}

// -- sound ----------------------------------------------------------------------------------------

let audio = null;

/** Browsers only let a page make sound after a click or key press: call this from one. */
export function unlockAudio() {
  const AudioContextClass = window.AudioContext || window.webkitAudioContext;
  if (!AudioContextClass) return;
  if (!audio) audio = new AudioContextClass();
  if (audio.state === 'suspended') audio.resume().catch(() => {});
}

for (const type of ['pointerdown', 'keydown']) {
  document.addEventListener(type, unlockAudio, { once: true, capture: true });
}

/** A short, friendly two- or three-tone chime generated on the spot (no audio files). */
export function chime(tones = [660, 880]) {
  unlockAudio();
  if (!audio) return;
  const start = audio.currentTime + 0.02;
  tones.forEach((frequency, i) => {
    const at = start + i * 0.22;
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.type = 'sine';
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, at);
    gain.gain.exponentialRampToValueAtTime(0.25, at + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.45);
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start(at);
    oscillator.stop(at + 0.5);
  });
}

/** Ask for permission to show notifications (only ever from a click). Resolves to the permission. */
export async function askNotificationPermission() {
  if (!('Notification' in window)) return 'unsupported';
  if (Notification.permission !== 'default') return Notification.permission;
  try {
    return await Notification.requestPermission();
  } catch {
    return 'unsupported';
  }
}

/** Show a system notification if the person allowed it; silently nothing otherwise. */
export function notify(title, body, tag) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  try {
    const notification = new Notification(title, { body, tag, renotify: true });
    notification.onclick = () => {
      window.focus();
      notification.close();
    };
  } catch {
    /* some mobile browsers only notify from a service worker */
  }
}

// -- DOM ------------------------------------------------------------------------------------------

/** Build an element: `h('p', {class: 'x', dataset: {id: 1}}, 'text', child)`. Text is never parsed as HTML. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') element.className = value;
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Set a status element's text and show it, or hide it with an empty text. */
export function say(element, text) {
  element.textContent = text || '';
  element.hidden = !text;
}

/** A stopping server (SIGTERM) sends `server_stopping` {retry_after} and then disconnects every socket. socket.io
 * does not reconnect after a disconnect by the server on its own: the page does, after the hint plus up to as much
 * again at random (so that a node's pages do not all come back at once), to another node behind the proxy or
 * the restarted one. */
export function reconnectAfterStop(socket) {
  let wait = 5;
  socket.on('server_stopping', (data) => {
    if (typeof data?.retry_after === 'number' && data.retry_after > 0) wait = Math.min(data.retry_after, 60);
  });
  socket.on('disconnect', (reason) => {
    if (reason === 'io server disconnect') setTimeout(() => socket.connect(), (wait + Math.random() * wait) * 1000);
  });
}
