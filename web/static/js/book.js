// The booking page: pick a day and a free time, book, then show the link and the calendar file.
import { controlCharField, errorMessage, pageData, request, t } from './common.js';
import { chosenSlot, icsUrl, showSlots, whenOf } from './book_slots.js';

const data = pageData();
const form = document.getElementById('book-form');
const errorBox = document.getElementById('form-error');
const submit = form.querySelector('button[type="submit"]');
const daySelect = form.elements.day;
const slots = document.getElementById('slots');
const slotsStatus = document.getElementById('slots-status');
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

async function loadSlots() {
  try {
    await showSlots(department, daySelect.value, slots, slotsStatus);
  } catch (error) {
    slotsStatus.textContent = errorMessage(error);
  }
}

async function showDone(body, emailGiven) {
  const done = document.getElementById('done');
  const appointment = body.appointment;
  const link = new URL(body.link, window.location.origin).href;
  done.querySelector('[data-field="summary"]').textContent = t('appt.summary', {
    department: appointment.department_name, when: whenOf(appointment.start, data.timezone),
  });
  const mail = done.querySelector('[data-field="mail"]');
  mail.textContent = body.email_sent ? t('appt.mail_sent') : t('appt.mail_failed');
  mail.hidden = !emailGiven;
  const anchor = document.getElementById('link');
  anchor.href = link;
  anchor.textContent = link;
  document.getElementById('open').href = link;
  form.hidden = true;
  done.hidden = false;
  document.getElementById('done-heading').focus();
  const ics = await icsUrl(body.token);
  if (ics) {
    const button = document.getElementById('ics');
    button.href = ics;
    button.hidden = false;
  }
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const start = chosenSlot(slots);
  const { name, concern, consent } = form.elements;
  const email = form.elements.email;
  if (start === null) {
    showError(t('appt.pick_slot'), slots.querySelector('input') || daySelect);
    return;
  }
  if (!consent.checked) {
    showError(t('err.consent'), consent);
    return;
  }
  const label = submit.textContent;
  submit.disabled = true;
  submit.textContent = t('sending');
  try {
    const { body } = await request('POST', `/api/appointments/${encodeURIComponent(department)}`, {
      body: {
        start, name: name.value.trim(), concern: concern.value.trim(), email: email ? email.value.trim() : '',
        language: document.documentElement.lang || 'de', consent: true,
      },
    });
    await showDone(body, Boolean(email?.value.trim()));
  } catch (error) {
    submit.disabled = false;
    submit.textContent = label;
    if (error.code === 'slot_unavailable' || error.code === 'day_full') await loadSlots();
    // The limits are per department day and per hour (docs/protocol.md): waiting minutes would not help.
    const bad = form.elements[controlCharField(error) ?? ''] || null;
    const text = error.code === 'rate_limited' ? t('appt.rate_limited') : bad ? t('err.control_char') : errorMessage(error);
    showError(text, bad || (error.code === 'invalid_input' && email?.value ? email : null));
  }
});

daySelect.addEventListener('change', loadSlots);
loadSlots();
