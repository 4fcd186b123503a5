// /admin/staff: list, add, edit (name, roles, departments), reset passwords, remove. The server decides
// what a lead may do (server/staff_admin.py); the page only offers what `may` allows and shows its errors.
import { errorMessage, h, pageData, request, t } from './common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
const names = Object.fromEntries((data.departments || []).map((d) => [d.id, d.name]));
let csrf = null;
let editing = null;

function status(text) {
  $('staff-status').textContent = text;
}

function showError(box, error) {
  const element = $(box);
  element.textContent = errorMessage(error);
  element.hidden = false;
  element.focus();
}

function hideErrors() {
  for (const id of ['staff-error', 'staff-add-error', 'staff-edit-error']) $(id).hidden = true;
}

function showSecret(username, password) {
  $('staff-secret-text').textContent = t('astaff.password_once', { username });
  $('staff-secret-value').textContent = password;
  const box = $('staff-secret');
  box.hidden = false;
  box.focus();
}

const roleText = (role) => t(`astaff.role.${role}`);

function departmentText(ids) {
  const mine = ids.filter((id) => id in names).map((id) => names[id]);
  const others = ids.length - mine.length;
  if (data.is_admin) return ids.map((id) => names[id] || id).join(', ');
  return others ? `${mine.join(', ')} ${t('astaff.other_departments')}` : mine.join(', ');
}

function row(account) {
  const label = `${account.display_name} (${account.username})`;
  const button = (text, cls, onClick, enabled = true) => {
    if (!enabled) return null;
    const b = h('button', { type: 'button', class: `button ${cls}`, 'aria-label': `${text}: ${label}` }, text);
    b.addEventListener('click', onClick);
    return b;
  };
  const me = account.username === data.me;
  return h(
    'tr',
    { dataset: { username: account.username } },
    h('th', { scope: 'row' }, account.username, me ? ` ${t('astaff.you')}` : ''),
    h('td', {}, account.display_name),
    h('td', {}, account.roles.map(roleText).join(', ')),
    h('td', {}, departmentText(account.departments)),
    h(
      'td',
      { class: 'admin-staff__actions' },
      button(t('astaff.edit'), '', () => openEdit(account), account.may.edit),
      button(t('astaff.reset'), 'button--quiet', () => resetPassword(account), account.may.password),
      button(t('astaff.remove'), 'button--danger', () => removeAccount(account), account.may.remove),
    ),
  );
}

async function load() {
  const list = $('staff-list');
  list.setAttribute('aria-busy', 'true');
  let body;
  try {
    ({ body } = await request('GET', '/api/admin/staff'));
  } catch (error) {
    showError('staff-error', error);
    return;
  } finally {
    list.setAttribute('aria-busy', 'false');
  }
  const head = ['astaff.username', 'astaff.name', 'astaff.roles', 'astaff.departments', 'astaff.actions'];
  list.replaceChildren(
    body.staff.length
      ? h(
          'table',
          { class: 'table admin-staff__table', 'aria-labelledby': 'staff-list-heading' },
          h('thead', {}, h('tr', {}, head.map((k) => h('th', { scope: 'col' }, t(k))))),
          h('tbody', {}, body.staff.map(row)),
        )
      : h('p', { class: 'muted' }, t('astaff.none')),
  );
  return body.staff.length;
}

function checked(form, name) {
  return [...form.querySelectorAll(`input[name="${name}"]`)].filter((i) => i.checked).map((i) => i.value);
}

async function addAccount(event) {
  event.preventDefault();
  hideErrors();
  const form = event.target;
  const username = form.username.value.trim();
  const body = {
    username,
    display_name: form.display_name.value.trim() || username,
    roles: checked(form, 'roles'),
    departments: checked(form, 'departments'),
  };
  if (form.password.value) body.password = form.password.value;
  let answer;
  try {
    ({ body: answer } = await request('POST', '/api/admin/staff', { body, csrf }));
  } catch (error) {
    form.username.setAttribute('aria-invalid', error.code === 'invalid_input' || error.code === 'conflict' ? 'true' : 'false');
    showError('staff-add-error', error);
    return;
  }
  form.username.removeAttribute('aria-invalid');
  form.reset();
  const only = form.querySelectorAll('input[name="departments"]');
  if (only.length === 1) only[0].checked = true;
  const clerk = form.querySelector('input[name="roles"][value="clerk"]');
  if (clerk) clerk.checked = true;
  await load();
  status(t('astaff.created', { username }));
  if (answer.password) showSecret(username, answer.password);
}

function openEdit(account) {
  hideErrors();
  editing = account;
  const form = $('staff-edit-form');
  $('staff-edit-heading').textContent = `${t('astaff.edit')}: ${account.display_name} (${account.username})`;
  form.display_name.value = account.display_name;
  for (const input of form.querySelectorAll('input[name="roles"]')) {
    input.checked = account.roles.includes(input.value);
    // Own roles, and a lead role an account shared with other departments has, are not the editor's to change.
    input.disabled = !account.may.roles || (input.value === 'lead' && !account.may.lead_role && !data.is_admin);
  }
  for (const input of form.querySelectorAll('input[name="departments"]')) {
    input.checked = account.departments.includes(input.value);
  }
  $('staff-edit-panel').hidden = false;
  $('staff-edit-heading').focus();
}

function closeEdit() {
  const username = editing?.username;
  editing = null;
  $('staff-edit-panel').hidden = true;
  const back = username && document.querySelector(`tr[data-username="${CSS.escape(username)}"] button`);
  (back || $('staff-heading')).focus();
}

async function saveEdit(event) {
  event.preventDefault();
  if (!editing) return;
  hideErrors();
  const form = event.target;
  const body = { display_name: form.display_name.value, departments: checked(form, 'departments') };
  if (editing.may.roles) {
    // Roles this page cannot show (e.g. a lead editing a moderator) stay as they are on the server.
    body.roles = checked(form, 'roles');
  }
  const username = editing.username;
  let answer;
  try {
    ({ body: answer } = await request('PATCH', `/api/admin/staff/${encodeURIComponent(username)}`, { body, csrf }));
  } catch (error) {
    showError('staff-edit-error', error);
    return;
  }
  await load();
  closeEdit();
  status(t(answer.changed.includes('roles') ? 'astaff.saved_sessions' : 'astaff.saved', { username }));
}

async function resetPassword(account) {
  hideErrors();
  if (!window.confirm(t('astaff.confirm_reset', { username: account.username }))) return;
  let answer;
  try {
    ({ body: answer } = await request('POST', `/api/admin/staff/${encodeURIComponent(account.username)}/password`, { body: {}, csrf }));
  } catch (error) {
    showError('staff-error', error);
    return;
  }
  status(t('astaff.reset_done', { username: account.username }));
  showSecret(account.username, answer.password);
}

async function removeAccount(account) {
  hideErrors();
  if (!window.confirm(t('astaff.confirm_remove', { username: account.username }))) return;
  try {
    await request('DELETE', `/api/admin/staff/${encodeURIComponent(account.username)}`, { csrf });
  } catch (error) {
    showError('staff-error', error);
    return;
  }
  await load();
  status(t('astaff.removed', { username: account.username }));
  $('staff-heading').focus();
}

async function start() {
  try {
    const { body } = await request('GET', '/api/session');
    csrf = body.csrf;
  } catch {
    window.location.assign('/staff');
    return;
  }
  $('staff-add-form').addEventListener('submit', addAccount);
  $('staff-edit-form').addEventListener('submit', saveEdit);
  $('staff-edit-cancel').addEventListener('click', closeEdit);
  $('staff-edit-panel').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') closeEdit();
  });
  const count = await load();
  if (count !== undefined) status(t('astaff.count', { count }));
}

start();
