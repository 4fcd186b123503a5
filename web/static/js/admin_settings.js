// /admin/settings (admins): server-wide settings that change at runtime on every node. Only changed fields
// are sent, with the revision the form was loaded at: when another admin saved first the server refuses
// (edit_conflict) and the form reloads, so nobody overwrites a colleague's change unseen.
import { errorMessage, pageData, request, t } from './common.js';

const $ = (id) => document.getElementById(id);
const fields = pageData().fields || [];
const form = $('settings-form');
let csrf = null;
let loaded = null;

function say(text) {
  $('settings-status').textContent = text;
}

function showError(error) {
  const box = $('settings-error');
  const text = errorMessage(error);
  box.textContent = error?.code === 'invalid_input' && error.message && error.message !== text ? `${text} (${error.message})` : text;
  box.hidden = false;
  box.focus();
}

async function api(method, body) {
  if (!csrf) csrf = (await request('GET', '/api/session')).body.csrf;
  return (await request(method, '/api/admin/settings', { body, csrf })).body;
}

function fill(data) {
  loaded = data;
  for (const name of fields) {
    const input = $(`setting-${name}`);
    const limit = data.limits[name];
    input.value = String(data.settings[name]);
    input.min = String(limit.min);
    input.max = String(limit.max);
    input.step = limit.integer ? '1' : 'any';
    document.querySelector(`[data-configured="${name}"]`).textContent = t('admin.settings.configured', {
      value: String(data.configured[name]),
    });
  }
  form.setAttribute('aria-busy', 'false');
}

async function load() {
  try {
    fill(await api('GET'));
  } catch (error) {
    showError(error);
  }
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  $('settings-error').hidden = true;
  if (!loaded) return;
  const body = { revision: loaded.revision };
  for (const name of fields) {
    const input = $(`setting-${name}`);
    const value = input.value.trim() === '' ? NaN : Number(input.value);
    if (value !== loaded.settings[name]) body[name] = Number.isNaN(value) ? input.value : value;
  }
  if (Object.keys(body).length === 1) {
    say(t('admin.settings.unchanged'));
    return;
  }
  try {
    fill(await api('PATCH', body));
    say(t('admin.settings.saved'));
  } catch (error) {
    showError(error);
    if (error?.code === 'edit_conflict') await load();
  }
});

load();
