// /admin/audit: the audit log, newest first, filtered by department, who, kind and dates; older entries
// page in with "load older entries" (the server's cursor). Entries hold usernames and ids only.
import { errorMessage, h, pageData, request, t } from './common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
const names = Object.fromEntries((data.departments || []).map((d) => [d.id, d.name]));
let filters = new URLSearchParams();
let next = null;
let shown = 0;

const when = (seconds) => new Date(seconds * 1000).toLocaleString(document.documentElement.lang || undefined, {
  dateStyle: 'medium',
  timeStyle: 'medium',
});

function showError(error) {
  const box = $('audit-error');
  box.textContent = errorMessage(error);
  box.hidden = false;
  box.focus();
}

function actionText(action) {
  const text = t(`audit.action.${action}`);
  return text === `audit.action.${action}` ? action : text;
}

function detailsText(details) {
  return Object.entries(details || {})
    .map(([key, value]) => `${key}: ${Array.isArray(value) ? value.join(', ') : String(value)}`)
    .join('; ');
}

function row(entry) {
  return h(
    'tr',
    {},
    h('td', {}, h('time', { datetime: new Date(entry.at * 1000).toISOString() }, when(entry.at))),
    h('td', {}, entry.actor === 'system' ? t('audit.system') : entry.actor),
    h('td', {}, actionText(entry.action)),
    h('td', {}, entry.target ? h('code', {}, entry.target) : ''),
    h('td', {}, entry.departments.map((id) => names[id] || id).join(', ')),
    h('td', { class: 'admin-audit__details' }, detailsText(entry.details)),
  );
}

function table() {
  const head = ['audit.when', 'audit.who', 'audit.what', 'audit.target', 'audit.departments', 'audit.details'];
  return h(
    'table',
    { class: 'table admin-audit__table', 'aria-labelledby': 'audit-heading' },
    h('thead', {}, h('tr', {}, head.map((k) => h('th', { scope: 'col' }, t(k))))),
    h('tbody', { id: 'audit-rows' }),
  );
}

/** Midnight of a yyyy-mm-dd date in the browser's time zone, in seconds; `nextDay` for an inclusive end. */
function dayStart(value, nextDay = false) {
  const [y, m, d] = value.split('-').map(Number);
  return Math.floor(new Date(y, m - 1, d + (nextDay ? 1 : 0)).getTime() / 1000);
}

function readFilters(form) {
  const params = new URLSearchParams();
  if (form.department.value) params.set('department', form.department.value);
  if (form.actor.value.trim()) params.set('actor', form.actor.value.trim());
  if (form.action.value) params.set('action', form.action.value);
  if (form.from.value) params.set('since', String(dayStart(form.from.value)));
  if (form.to.value) params.set('until', String(dayStart(form.to.value, true)));
  params.set('limit', '50');
  return params;
}

async function load({ more = false } = {}) {
  const list = $('audit-list');
  const params = new URLSearchParams(filters);
  if (more && next) params.set('cursor', next);
  list.setAttribute('aria-busy', 'true');
  let body;
  try {
    ({ body } = await request('GET', `/api/admin/audit?${params}`));
  } catch (error) {
    showError(error);
    return;
  } finally {
    list.setAttribute('aria-busy', 'false');
  }
  $('audit-error').hidden = true;
  if (!more) {
    shown = 0;
    list.replaceChildren(body.entries.length ? table() : h('p', { class: 'muted' }, t('audit.none')));
  }
  const rows = $('audit-rows');
  if (rows) rows.append(...body.entries.map(row));
  shown += body.entries.length;
  next = body.next;
  const button = $('audit-more');
  button.textContent = t('audit.more');
  button.hidden = !next;
  $('audit-status').textContent = t('audit.count', { count: shown });
}

function start() {
  const form = $('audit-filters');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    filters = readFilters(form);
    load();
  });
  $('audit-more').addEventListener('click', () => load({ more: true }));
  filters = readFilters(form);
  load();
}

start();
