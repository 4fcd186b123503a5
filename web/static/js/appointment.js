// The citizen's appointment page: its state, check-in shortly before the time, moving and cancelling.
// The token comes in the URL fragment (never sent to the server in a URL); requests carry it as a Bearer.
import { errorMessage, liveTicket, pageData, request, say, storeToken, t } from './common.js';
import { chosenSlot, dayLabel, icsUrl, showSlots, timeOf, whenOf } from './book_slots.js';

const data = pageData();
const token = decodeURIComponent(window.location.hash.slice(1));
const details = document.getElementById('details');
const notice = document.getElementById('notice');
const errorBox = document.getElementById('error');
const checkinButton = document.getElementById('checkin');
const toRoom = document.getElementById('to-room');
const changeActions = document.getElementById('change-actions');
const moveForm = document.getElementById('move-form');
const moveOpen = document.getElementById('move-open');
const confirmBox = document.getElementById('cancel-confirm');
const slots = document.getElementById('slots');
const slotsStatus = document.getElementById('slots-status');
let appointment = null;
let timer = null;

function field(name) {
  return details.querySelector(`[data-field="${name}"]`);
}

function showError(error) {
  say(errorBox, errorMessage(error));
  errorBox.focus();
}

async function render() {
  const a = appointment;
  const now = Date.now() / 1000;
  field('summary').textContent = t('appt.summary', { department: a.department_name, when: whenOf(a.start, data.timezone) });
  field('state').textContent = t(`appt.state.${a.state}`);
  say(field('name'), a.name);
  const booked = a.state === 'booked';
  const windowOpen = booked && now >= a.checkin_opens && now <= a.checkin_closes;
  let checkinText = '';
  if (booked && now < a.checkin_opens) checkinText = t('appt.checkin_from', { time: timeOf(a.checkin_opens, data.timezone) });
  else if (windowOpen) checkinText = t('appt.checkin_now');
  else if (booked) checkinText = t('appt.checkin_closed');
  else if (a.state === 'checked_in') checkinText = t('appt.in_room');
  field('checkin-text').textContent = checkinText;
  checkinButton.hidden = !windowOpen;
  toRoom.hidden = true;
  if (a.state === 'checked_in') {
    const live = await liveTicket();
    if (live) {
      toRoom.href = `/wait/${encodeURIComponent(live.ticket.id)}#${live.token}`;
      toRoom.hidden = false;
    }
  }
  field('change-text').textContent = a.can_change
    ? t('appt.change_until', { when: whenOf(a.change_until, data.timezone) })
    : (booked ? t('appt.no_change') : '');
  changeActions.hidden = !a.can_change;
  if (!a.can_change) {
    moveForm.hidden = true;
    confirmBox.hidden = true;
  }
  clearTimeout(timer);
  const next = [a.checkin_opens, a.checkin_closes, a.change_until].filter((x) => x && x > now).sort((x, y) => x - y)[0];
  if (booked && next) timer = setTimeout(load, Math.min(2 ** 31 - 1, (next - now) * 1000 + 500));
}

async function load() {
  try {
    const { body } = await request('GET', '/api/appointments/me', { token });
    appointment = body.appointment;
    details.hidden = false;
    await render();
  } catch (error) {
    details.hidden = true;
    showError(error);
  }
}

async function showIcs() {
  const url = await icsUrl(token);
  if (!url) return;
  const button = document.getElementById('ics');
  button.href = url;
  button.hidden = false;
}

checkinButton.addEventListener('click', async () => {
  checkinButton.disabled = true;
  try {
    const { body } = await request('POST', '/api/appointments/me/checkin', { token, body: {} });
    storeToken(body.ticket_token);
    window.location.assign(body.wait_link);
  } catch (error) {
    checkinButton.disabled = false;
    if (error.code === 'already_queued') {
      const live = await liveTicket();
      if (live) window.location.assign(`/wait/${encodeURIComponent(live.ticket.id)}#${live.token}`);
    }
    showError(error);
  }
});

document.getElementById('cancel').addEventListener('click', () => {
  confirmBox.hidden = false;
  document.getElementById('cancel-no').focus();
});
document.getElementById('cancel-no').addEventListener('click', () => {
  confirmBox.hidden = true;
  document.getElementById('cancel').focus();
});
document.getElementById('cancel-yes').addEventListener('click', async () => {
  try {
    const { body } = await request('DELETE', '/api/appointments/me', { token });
    appointment = body.appointment;
    confirmBox.hidden = true;
    await render();
    say(notice, t('appt.cancelled'));
    document.getElementById('heading').focus();
  } catch (error) {
    showError(error);
  }
});

async function loadDays() {
  const select = moveForm.elements.day;
  const { body } = await request('GET', `/api/appointments/${encodeURIComponent(appointment.department)}/days`);
  select.replaceChildren(...body.days.map((d) => new Option(dayLabel(d.date, data.timezone), d.date)));
  if (select.value) await showSlots(appointment.department, select.value, slots, slotsStatus);
  else slotsStatus.textContent = t('appt.no_slots');
}

moveOpen.addEventListener('click', async () => {
  const open = moveForm.hidden;
  moveForm.hidden = !open;
  moveOpen.setAttribute('aria-expanded', String(open));
  if (!open) return;
  try {
    await loadDays();
    moveForm.elements.day.focus();
  } catch (error) {
    showError(error);
  }
});

moveForm.elements.day.addEventListener('change', async () => {
  try {
    await showSlots(appointment.department, moveForm.elements.day.value, slots, slotsStatus);
  } catch (error) {
    showError(error);
  }
});

moveForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const start = chosenSlot(slots);
  if (start === null) {
    say(errorBox, t('appt.pick_slot'));
    (slots.querySelector('input') || moveForm.elements.day).focus();
    return;
  }
  try {
    const { body } = await request('POST', '/api/appointments/me/move', { token, body: { start } });
    appointment = body.appointment;
    moveForm.hidden = true;
    moveOpen.setAttribute('aria-expanded', 'false');
    say(errorBox, '');
    await render();
    await showIcs();
    say(notice, t('appt.moved', { when: whenOf(appointment.start, data.timezone) }));
    document.getElementById('heading').focus();
  } catch (error) {
    if (error.code === 'slot_unavailable') await showSlots(appointment.department, moveForm.elements.day.value, slots, slotsStatus);
    showError(error);
  }
});

if (!token || token.length < 16) {
  say(errorBox, t('appt.no_link'));
} else {
  load().then(() => appointment && showIcs());
}

