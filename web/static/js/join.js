// The check-in form: validates, posts to the JSON API, stores the token and goes to the waiting page.
import { controlCharField, errorMessage, liveTicket, request, storeToken, storedToken, t } from './common.js';

const form = document.getElementById('join-form');
const errorBox = document.getElementById('form-error');
const submit = form.querySelector('button[type="submit"]');
const concern = form.elements.concern;
const counter = document.getElementById('concern-count');
const department = form.dataset.department;

function showError(text, field) {
  errorBox.textContent = text;
  errorBox.hidden = false;
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  if (field) {
    field.setAttribute('aria-invalid', 'true');
    field.focus();
  } else {
    errorBox.focus();
  }
}

function updateCounter() {
  const left = Number(counter.dataset.max) - concern.value.length;
  // Only speak up near the limit; a counter that talks on every key press is noise.
  counter.textContent = left <= 100 ? t('chars_left', { n: left }) : '';
}

async function showLiveTicket(live) {
  const banner = document.getElementById('already');
  banner.querySelector('[data-field="text"]').textContent = t('already', { department: live.ticket.department_name });
  banner.querySelector('[data-field="link"]').href = `/wait/${encodeURIComponent(live.ticket.id)}#${live.token}`;
  banner.hidden = false;
  form.hidden = true;
}

function validate() {
  const { name, consent } = form.elements;
  if (form.dataset.requireName === 'true' && !name.value.trim()) return [t('err.name_required'), name];
  if (form.dataset.requireConcern === 'true' && !concern.value.trim()) return [t('err.concern_required'), concern];
  if (!consent.checked) return [t('err.consent'), consent];
  return null;
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const problem = validate();
  if (problem) {
    showError(...problem);
    return;
  }
  const { name, language, interpreter, consent } = form.elements;
  const label = submit.textContent;
  submit.disabled = true;
  submit.textContent = t('sending');
  try {
    const { body } = await request('POST', `/api/departments/${encodeURIComponent(department)}/tickets`, {
      token: storedToken(), // lets the server notice a ticket this browser still holds
      body: {
        name: name.value.trim(),
        concern: concern.value.trim(),
        language: language.value,
        interpreter: interpreter.checked,
        consent: consent.checked,
      },
    });
    storeToken(body.token);
    window.location.assign(`/wait/${encodeURIComponent(body.ticket.id)}#${body.token}`);
  } catch (error) {
    submit.disabled = false;
    submit.textContent = label;
    if (error.code === 'already_queued') {
      const live = await liveTicket();
      if (live) {
        await showLiveTicket(live);
        return;
      }
    }
    const bad = form.elements[controlCharField(error) ?? ''] || null;
    showError(bad ? t('err.control_char') : errorMessage(error), bad);
  }
});

concern.addEventListener('input', updateCounter);
updateCounter();
liveTicket().then((live) => live && showLiveTicket(live));
