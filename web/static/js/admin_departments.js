// /admin: the departments a lead leads (an admin: all). Edit, close at once, reopen; admins create and remove.
// Every change names the revision it started from: when someone else saved first, the server refuses
// (edit_conflict) and the list is reloaded, so nobody overwrites a colleague's change unseen.
import { errorMessage, h, pageData, request, t } from './common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const list = $('department-list');
let csrf = null;
let departments = [];
let editing = null; // the department being edited (null: a new one)
let closing = null;
let returnFocus = null;

function status(text) {
  $('admin-status').textContent = text;
}

/** The translated error; for bad input also the server's detail, which names the field (leads and admins read it). */
function explain(error) {
  const text = errorMessage(error);
  return error?.code === 'invalid_input' && error.message && error.message !== text ? `${text} (${error.message})` : text;
}

function showError(box, error) {
  box.textContent = typeof error === 'string' ? error : explain(error);
  box.hidden = false;
  box.focus();
}

function hideErrors() {
  for (const id of ['admin-error', 'edit-error', 'close-error']) $(id).hidden = true;
}

async function api(method, url, body) {
  if (!csrf) csrf = (await request('GET', '/api/session')).body.csrf;
  return (await request(method, url, { body, csrf })).body;
}

const url = (d) => `/api/admin/departments/${encodeURIComponent(d.id)}`;

function stateText(d) {
  if (d.closed_now) return d.closed_message ? t('admin.dept.closed_now_msg', { message: d.closed_message }) : t('admin.dept.closed_now');
  return d.open ? t('open') : t('closed');
}

function hoursText(d) {
  if (d.hours === null) return t('admin.dept.always_open');
  const days = DAYS.filter((day) => d.hours[day]?.length);
  if (!days.length) return t('admin.dept.never_open');
  return days.map((day) => `${t(`admin.dept.day.${day}`)} ${d.hours[day].join(', ')}`).join('; ');
}

function card(d) {
  const edit = h('button', { type: 'button', class: 'button', 'aria-label': `${t('admin.dept.edit')}: ${d.name}` }, t('admin.dept.edit'));
  edit.addEventListener('click', () => openEdit(d, edit));
  const toggle = d.closed_now
    ? h('button', { type: 'button', class: 'button', 'aria-label': `${t('admin.dept.reopen')}: ${d.name}` }, t('admin.dept.reopen'))
    : h('button', { type: 'button', class: 'button button--danger', 'aria-label': `${t('admin.dept.close')}: ${d.name}` }, t('admin.dept.close'));
  toggle.addEventListener('click', () => (d.closed_now ? reopen(d) : openClose(d, toggle)));
  const actions = [edit, toggle];
  if (data.is_admin) {
    const remove = h('button', { type: 'button', class: 'button button--quiet', 'aria-label': `${t('admin.dept.delete')}: ${d.name}` }, t('admin.dept.delete'));
    remove.addEventListener('click', () => removeDepartment(d));
    actions.push(remove);
  }
  return h(
    'li',
    { class: 'card admin-dept', dataset: { department: d.id } },
    h(
      'div',
      { class: 'dept__head' },
      h('h2', { class: 'dept__name h3', id: `dept-${d.id}` }, d.name),
      h('span', { class: `badge ${d.open ? 'badge--open' : 'badge--closed'}`, dataset: { field: 'state' } }, stateText(d)),
    ),
    h(
      'dl',
      { class: 'admin-dept__facts' },
      h('div', {}, h('dt', {}, t('admin.dept.hours')), h('dd', { dataset: { field: 'hours' } }, hoursText(d))),
      h('div', {}, h('dt', {}, t('admin.dept.waiting')), h('dd', {}, String(d.waiting))),
      h('div', {}, h('dt', {}, t('admin.dept.closures')), h('dd', {}, d.closures.length
        ? d.closures.map((c) => (c.start === c.end ? c.start : `${c.start} – ${c.end}`)).join(', ')
        : '–')),
    ),
    h('div', { class: 'button-row button-row--start' }, actions),
  );
}

async function load() {
  list.setAttribute('aria-busy', 'true');
  try {
    const body = await api('GET', '/api/admin/departments');
    departments = body.departments;
    list.replaceChildren(
      departments.length ? h('ul', { class: 'cards admin-depts' }, departments.map(card)) : h('p', {}, t('admin.dept.none')),
    );
  } catch (error) {
    showError($('admin-error'), error);
  } finally {
    list.setAttribute('aria-busy', 'false');
  }
}

// -- edit / create --

function closureRow(c = { start: '', end: '', message: '' }) {
  const n = document.querySelectorAll('#closures > li').length + Math.floor(Math.random() * 1e6);
  const field = (name, label, type, value) => {
    const id = `closure-${name}-${n}`;
    return h('div', { class: 'inline-field' }, h('label', { for: id }, label),
      h('input', { id, type, value, dataset: { closure: name }, autocomplete: 'off', maxlength: type === 'text' ? String(data.limits.message) : null }));
  };
  const remove = h('button', { type: 'button', class: 'button button--quiet' }, t('admin.dept.remove_closure'));
  const row = h('li', { class: 'admin-closure' },
    field('start', t('admin.dept.closure_start'), 'date', c.start),
    field('end', t('admin.dept.closure_end'), 'date', c.end),
    field('message', t('admin.dept.closure_message'), 'text', c.message),
    remove);
  remove.addEventListener('click', () => {
    row.remove();
    $('add-closure').focus();
  });
  return row;
}

function setAlways(always) {
  $('dept-always').checked = always;
  for (const day of DAYS) $(`hours-${day}`).disabled = always;
}

// -- appointments (the department's AppointmentConfig; null: none offered) --

const apptNumbers = () => [...document.querySelectorAll('#appointments-field [data-appt]')];

function setOffer(on) {
  $('appt-offer').checked = on;
  $('appt-settings').hidden = !on;
}

function fillAppointments(config) {
  setOffer(Boolean(config));
  for (const day of DAYS) {
    $(`appt-hours-${day}`).value = (config?.hours?.[day] ?? []).join(', ');
    $(`appt-hours-${day}`).removeAttribute('aria-invalid');
  }
  for (const input of apptNumbers()) {
    input.value = config?.[input.dataset.appt] ?? '';
    input.removeAttribute('aria-invalid');
  }
  $(config?.priority === 'every' ? 'appt-priority-every' : 'appt-priority-first').checked = true;
}

/** The AppointmentConfig as the API takes it; an empty number field is left out (the server's default). */
function appointmentValues() {
  if (!$('appt-offer').checked) return null;
  const config = {
    hours: Object.fromEntries(DAYS.map((day) => [day, $(`appt-hours-${day}`).value.split(',').map((s) => s.trim()).filter(Boolean)])),
    priority: $('appt-priority-every').checked ? 'every' : 'first',
  };
  for (const input of apptNumbers()) {
    if (input.value.trim() !== '') config[input.dataset.appt] = Number(input.value);
  }
  return config;
}

/** Mark the appointment field a refusal names ("appointments: slot_minutes must be ..."). */
function markAppointmentField(error) {
  const name = error?.code === 'invalid_input' && /^appointments: (\w+)/.exec(error.message || '')?.[1];
  const input = name && document.querySelector(`#appointments-field [data-appt="${name}"]`);
  if (input) input.setAttribute('aria-invalid', 'true');
}

function openEdit(d, opener) {
  hideErrors();
  editing = d;
  returnFocus = opener;
  $('close-panel').hidden = true;
  $('edit-heading').textContent = d ? t('admin.dept.edit_title', { name: d.name }) : t('admin.dept.new');
  $('field-id').hidden = Boolean(d);
  $('dept-id').value = '';
  $('dept-name').value = d?.name ?? '';
  $('dept-description').value = d?.description ?? '';
  setAlways(d ? d.hours === null : false);
  for (const day of DAYS) {
    $(`hours-${day}`).value = (d?.hours?.[day] ?? []).join(', ');
    $(`hours-${day}`).removeAttribute('aria-invalid');
  }
  $('closures').replaceChildren(...(d?.closures ?? []).map((c) => closureRow(c)));
  $('dept-cap').value = d?.queue_cap ?? '';
  $('dept-minutes').value = d?.service_minutes ?? 10;
  $('dept-require-name').checked = Boolean(d?.require_name);
  $('dept-require-concern').checked = Boolean(d?.require_concern);
  fillAppointments(d?.appointments ?? null);
  $('edit-panel').hidden = false;
  $('edit-heading').focus();
}

function closeEdit() {
  $('edit-panel').hidden = true;
  editing = null;
  (returnFocus?.isConnected ? returnFocus : $('departments-heading')).focus();
}

function formValues() {
  const hours = $('dept-always').checked
    ? null
    : Object.fromEntries(DAYS.map((day) => [day, $(`hours-${day}`).value.split(',').map((s) => s.trim()).filter(Boolean)]));
  const closures = [...document.querySelectorAll('#closures > li')].map((row) => {
    const value = (name) => row.querySelector(`[data-closure="${name}"]`).value.trim();
    return { start: value('start'), end: value('end') || value('start'), message: value('message') };
  });
  const cap = $('dept-cap').value.trim();
  return {
    name: $('dept-name').value,
    description: $('dept-description').value,
    hours,
    closures,
    queue_cap: cap === '' ? null : Number(cap),
    service_minutes: Number($('dept-minutes').value),
    require_name: $('dept-require-name').checked,
    require_concern: $('dept-require-concern').checked,
    appointments: appointmentValues(),
  };
}

const SLOT = /^\d{1,2}:\d{2}\s*-\s*\d{1,2}:\d{2}$/;

/** The first weekday input (opening hours, then appointment hours) not like 08:00-12:00 (marked invalid), or null. */
function badHours() {
  let first = null;
  const inputs = DAYS.map((day) => $(`hours-${day}`));
  if ($('appt-offer').checked) inputs.push(...DAYS.map((day) => $(`appt-hours-${day}`)));
  for (const input of inputs) {
    const bad = !input.disabled && input.value.split(',').map((s) => s.trim()).filter(Boolean).some((s) => !SLOT.test(s));
    if (bad) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
    if (bad && !first) first = input;
  }
  return first;
}

async function save(event) {
  event.preventDefault();
  hideErrors();
  const bad = badHours();
  if (bad) {
    const key = bad.id.startsWith('appt-') ? 'admin.dept.appt.bad_hours' : 'admin.dept.bad_hours';
    showError($('edit-error'), t(key, { day: bad.labels[0].textContent }));
    return;
  }
  const values = formValues();
  try {
    if (editing) {
      await api('PATCH', url(editing), { ...values, revision: editing.revision });
    } else {
      await api('POST', '/api/admin/departments', { id: $('dept-id').value.trim(), ...values });
    }
    const name = values.name;
    $('edit-panel').hidden = true;
    editing = null;
    await load();
    status(t('admin.dept.saved', { name }));
    $('departments-heading').focus();
  } catch (error) {
    if (error.code === 'edit_conflict') await load();
    markAppointmentField(error);
    showError($('edit-error'), error);
  }
}

// -- close at once / reopen / remove --

function openClose(d, opener) {
  hideErrors();
  closing = d;
  returnFocus = opener;
  $('edit-panel').hidden = true;
  $('close-heading').textContent = t('admin.dept.close_title', { name: d.name });
  $('close-message').value = '';
  $('close-keep').checked = true;
  $('close-panel').hidden = false;
  $('close-heading').focus();
}

function hideClose() {
  $('close-panel').hidden = true;
  closing = null;
  (returnFocus?.isConnected ? returnFocus : $('departments-heading')).focus();
}

async function closeNow(event) {
  event.preventDefault();
  hideErrors();
  const d = closing;
  try {
    const body = await api('POST', `${url(d)}/close`, {
      message: $('close-message').value,
      keep_places: $('close-keep').checked,
    });
    $('close-panel').hidden = true;
    closing = null;
    await load();
    status(t('admin.dept.closed_done', { name: d.name, count: body.ended }));
    $('departments-heading').focus();
  } catch (error) {
    showError($('close-error'), error);
  }
}

async function reopen(d) {
  hideErrors();
  try {
    await api('POST', `${url(d)}/reopen`, {});
    await load();
    status(t('admin.dept.reopened', { name: d.name }));
    $('departments-heading').focus();
  } catch (error) {
    showError($('admin-error'), error);
  }
}

async function removeDepartment(d) {
  hideErrors();
  if (!window.confirm(t('admin.dept.delete_confirm', { name: d.name }))) return;
  try {
    await api('DELETE', url(d), { revision: d.revision });
    await load();
    status(t('admin.dept.deleted', { name: d.name }));
    $('departments-heading').focus();
  } catch (error) {
    if (error.code === 'edit_conflict') await load();
    showError($('admin-error'), error);
  }
}

$('edit-form').addEventListener('submit', save);
$('edit-cancel').addEventListener('click', closeEdit);
$('add-closure').addEventListener('click', () => {
  const row = closureRow();
  $('closures').append(row);
  row.querySelector('input').focus();
});
$('dept-always').addEventListener('change', (event) => setAlways(event.target.checked));
$('appt-offer').addEventListener('change', (event) => setOffer(event.target.checked));
$('close-form').addEventListener('submit', closeNow);
$('close-cancel').addEventListener('click', hideClose);
$('new-department')?.addEventListener('click', (event) => openEdit(null, event.target));
for (const panel of ['edit-panel', 'close-panel']) {
  $(panel).addEventListener('keydown', (event) => {
    if (event.key === 'Escape') (panel === 'edit-panel' ? closeEdit : hideClose)();
  });
}
load();
