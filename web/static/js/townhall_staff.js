// /staff/townhall: moderators create events and find their pages. Times are entered in the browser's
// local time (datetime-local) and sent as ISO 8601 with this browser's offset at that date.
import { errorMessage, h, request, t } from './common.js';
import { when } from './townhall_common.js';

const $ = (id) => document.getElementById(id);
const form = $('create-form');
let csrf = null;

/** "2026-12-03T18:00" (local) -> "2026-12-03T18:00:00+01:00"; null for an empty field. */
function isoWithOffset(value) {
  if (!value) return null;
  const date = new Date(value); // a datetime-local value without zone is local time
  if (Number.isNaN(date.getTime())) return null;
  const minutes = -date.getTimezoneOffset();
  const sign = minutes >= 0 ? '+' : '-';
  const abs = Math.abs(minutes);
  const pad = (n) => String(n).padStart(2, '0');
  const seconds = value.length === 16 ? ':00' : '';
  return `${value}${seconds}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

function showError(text, field = null) {
  const box = $('create-error');
  box.textContent = text || '';
  box.hidden = !text;
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  if (field) field.setAttribute('aria-invalid', 'true');
  if (text) (field || box).focus();
}

function syncFields() {
  $('th-until-field').hidden = !$('th-advance').checked;
  $('th-recording-fields').hidden = !$('th-recorded').checked;
}
$('th-advance').addEventListener('change', syncFields);
$('th-recorded').addEventListener('change', syncFields);

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const title = $('th-title').value.trim();
  if (!title) {
    showError(t('err.invalid_input'), $('th-title'));
    return;
  }
  const politicians = $('th-politicians').value.split(/[,\s]+/).filter(Boolean);
  if (!politicians.length) {
    showError(t('err.invalid_input'), $('th-politicians'));
    return;
  }
  const startsAt = isoWithOffset($('th-starts').value);
  const endsAt = isoWithOffset($('th-ends').value);
  if (!startsAt || !endsAt) {
    showError(t('th.staff.times'), startsAt ? $('th-ends') : $('th-starts'));
    return;
  }
  const advance = $('th-advance').checked;
  const recorded = $('th-recorded').checked;
  const body = {
    title,
    description: $('th-description').value.trim(),
    politicians,
    starts_at: startsAt,
    ends_at: endsAt,
    advance_questions: advance,
    questions_until: advance ? isoWithOffset($('th-until').value) : null,
    recorded,
    recording_purpose: recorded ? $('th-purpose').value.trim() : '',
    retention_days: recorded ? Number($('th-retention').value) || 0 : 0,
    audience_limit: Number($('th-limit').value) || 500,
  };
  showError('');
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const { body: created } = await request('POST', '/api/townhall/events', { body, csrf });
    const status = $('create-status');
    status.textContent = t('th.staff.created', { title: created.event.title });
    status.hidden = false;
    form.reset();
    syncFields();
    await load(created.event.id);
  } catch (error) {
    showError(errorMessage(error));
  } finally {
    button.disabled = false;
  }
});

function row(event, fresh) {
  const base = `/townhall/${encodeURIComponent(event.id)}`;
  const id = `ev-${event.id}`;
  return h(
    'li',
    { class: `card th-event-card${fresh ? ' th-event-card--new' : ''}`, dataset: { event: event.id } },
    h('h3', { class: 'th-event-card__title', id }, event.title),
    h('p', { class: 'th-event-card__meta' },
      h('span', { class: `badge ${event.state === 'live' ? 'badge--open' : event.state === 'ended' ? 'badge--closed' : 'badge--info'}` }, t(`th.state.${event.state}`)),
      ' ', when(event.starts_at)),
    h('p', { class: 'th-event-card__with' }, (event.speakers || event.politicians).join(', ')),
    h('p', { class: 'button-row button-row--start' },
      h('a', { class: 'button', href: base, 'aria-describedby': id }, t('th.staff.page')),
      h('a', { class: 'button button--primary', href: `${base}/moderate`, 'aria-describedby': id }, t('th.staff.moderate')),
      h('a', { class: 'button', href: `${base}/presenter`, 'aria-describedby': id }, t('th.staff.presenter'))),
  );
}

async function load(fresh = null) {
  let body;
  try {
    ({ body } = await request('GET', '/api/townhall/events'));
  } catch (error) {
    showError(errorMessage(error));
    return;
  }
  const events = [...body.upcoming, ...body.past];
  $('events').replaceChildren(events.length
    ? h('ul', { class: 'cards th-events' }, events.map((event) => row(event, event.id === fresh)))
    : h('p', { class: 'muted' }, t('th.staff.none')));
}

async function start() {
  try {
    const { body } = await request('GET', '/api/session');
    csrf = body.csrf;
  } catch {
    window.location.assign('/staff');
    return;
  }
  syncFields();
  await load();
}

start();
