// Shared by the booking page and the appointment page: free slots of a day as radio buttons, dates in words.
import { h, request, t } from './common.js';

const lang = document.documentElement.lang || 'de';

/** "Montag, 2. März 2026, 09:20 Uhr": a slot's start in the office's time zone. */
export function whenOf(start, timeZone) {
  const moment = new Date(start * 1000);
  const date = new Intl.DateTimeFormat(lang, { dateStyle: 'full', timeZone }).format(moment);
  const time = new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit', timeZone }).format(moment);
  return t('appt.when', { date, time });
}

export function timeOf(start, timeZone) {
  return new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit', timeZone }).format(new Date(start * 1000));
}

export function dayLabel(iso, timeZone) {
  const [y, m, d] = iso.split('-').map(Number);
  return new Intl.DateTimeFormat(lang, { dateStyle: 'full', timeZone: 'UTC' }).format(new Date(Date.UTC(y, m - 1, d, 12)));
}

/** Load a day's free slots into `container` as radio buttons (name "slot"); says how many in `status`. */
export async function showSlots(department, day, container, status) {
  container.replaceChildren();
  status.textContent = t('appt.loading');
  const { body } = await request('GET', `/api/appointments/${encodeURIComponent(department)}/slots?day=${encodeURIComponent(day)}`);
  const free = body.slots.filter((slot) => slot.free > 0);
  for (const slot of free) {
    const id = `slot-${slot.start}`;
    // A slot within the cancellation deadline can be booked, but not changed online afterwards: said before.
    const fixed = slot.can_change === false ? [' ', h('strong', {}, t('appt.fixed'))] : [];
    container.append(h('div', { class: 'check' },
      h('input', { type: 'radio', name: 'slot', id, value: String(slot.start) }),
      h('label', { for: id }, t('appt.time', { time: slot.time }), ' ',
        h('span', { class: 'muted' }, `(${t('appt.free', { count: slot.free })})`), ...fixed)));
  }
  status.textContent = free.length ? t('appt.slots_count', { count: free.length }) : t('appt.no_slots');
  if (free.some((slot) => slot.can_change === false)) {
    status.textContent = `${status.textContent.replace(/[^.!?]$/, '$&.')} ${t('appt.fixed_some')}`;
  }
  return free.length;
}

/** The chosen slot's start, or null. */
export function chosenSlot(container) {
  const checked = container.querySelector('input[name="slot"]:checked');
  return checked ? Number(checked.value) : null;
}

/** An object URL of the appointment's .ics file (fetched with the token, never put into a URL). */
export async function icsUrl(token) {
  const response = await fetch('/api/appointments/me/ics', {
    headers: { Authorization: `Bearer ${token}` }, cache: 'no-store', credentials: 'same-origin',
  });
  if (!response.ok) return null;
  return URL.createObjectURL(await response.blob());
}
