// The clerk's dashboard: login, live queues over socket.io, actions with acknowledgements.
import {
  askNotificationPermission,
  chime,
  errorMessage,
  estimateText,
  h,
  notify,
  pageData,
  reconnectAfterStop,
  request,
  say,
  t,
  tn,
  unlockAudio,
  whenText,
} from './common.js';
import { MediaSession, openLocalMedia } from './media.js';
import { createConsultation } from './consult.js';

const ACK_TIMEOUT_MS = 10000;
const TICK_MS = 5000;
const CSRF_KEY = 'sps_csrf';
const ACTIVE = new Set(['called', 'in_consultation']);
const LIVE = new Set(['waiting', 'called', 'in_consultation']);

const data = pageData();
const departmentNames = Object.fromEntries(data.departments.map((d) => [d.id, d.name]));
const $ = (id) => document.getElementById(id);
const panels = $('departments');

let csrf = sessionStorage.getItem(CSRF_KEY);
let clerk = null; // {username, display_name, departments, roles}
let socket = null;
let clockOffsetMs = 0; // server clock minus ours, from the Date header
let myPresence = 'available';
let loggingOut = false;
const departments = new Map(); // id -> department as in the dashboard, with tickets and clerks
let transferTargets = []; // every department, open or closed now and when it opens next (dashboard payload)
let timezone; // the municipality's, for "öffnet Montag um 8:00"
const displayNames = {}; // username -> display name, learnt from presence events

// -- session ----------------------------------------------------------------------------------------

function learnClock(response) {
  const date = Date.parse(response.headers.get('Date') || '');
  if (!Number.isNaN(date)) clockOffsetMs = date - Date.now();
}

function showLogin(message) {
  $('dashboard-view').hidden = true;
  $('login-view').hidden = false;
  say($('login-error'), message);
  if (message) $('login-error').focus();
  else if (!$('login-form').hidden) $('username').focus();
  else $('sso-login')?.focus(); // password logins switched off: single sign-on only
}

// A failed single sign-on comes back as /staff?sso_error=<code> (server/http/oidc.py): say why, once.
const ssoError = new URLSearchParams(window.location.search).get('sso_error');
if (ssoError) window.history.replaceState(null, '', window.location.pathname);

function startSession(body) {
  csrf = body.csrf;
  sessionStorage.setItem(CSRF_KEY, csrf);
  clerk = body.clerk;
  displayNames[clerk.username] = clerk.display_name;
  document.querySelector('[data-field="clerk-name"]').textContent = clerk.display_name;
  // Leads see their departments' recordings; clerks who may record find their own there.
  $('townhall-link').hidden = !clerk.roles.includes('moderator');
  $('recordings-link').hidden = !(clerk.roles.includes('lead') || data.departments.some((d) => d.recording && clerk.departments.includes(d.id)));
  $('login-view').hidden = true;
  $('dashboard-view').hidden = false;
  connect();
}

async function restoreSession() {
  try {
    const { body, response } = await request('GET', '/api/session');
    learnClock(response);
    startSession(body);
  } catch (error) {
    if (ssoError) showLogin(errorMessage({ code: ssoError }));
    else showLogin(error.code === 'unauthenticated' ? '' : errorMessage(error));
  }
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  if (!username || !password) {
    showLogin(t('err.unauthenticated'));
    return;
  }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const { body, response } = await request('POST', '/api/session', { body: { username, password } });
    learnClock(response);
    form.reset();
    say($('login-error'), '');
    startSession(body);
    $('dashboard-heading').focus();
  } catch (error) {
    form.elements.password.value = '';
    showLogin(errorMessage(error));
  } finally {
    button.disabled = false;
  }
});

$('logout').addEventListener('click', async () => {
  loggingOut = true;
  try {
    await request('DELETE', '/api/session', { csrf });
  } catch {
    /* the session is gone either way once the cookie expires */
  }
  endConsultation({ tell: true });
  socket?.disconnect();
  socket = null;
  sessionStorage.removeItem(CSRF_KEY);
  departments.clear();
  panels.replaceChildren();
  clerk = null;
  loggingOut = false;
  showLogin('');
});

// -- socket -----------------------------------------------------------------------------------------

function setConnection(state) {
  const element = $('connection');
  element.dataset.state = state;
  element.textContent = state === 'reconnecting' ? t('staff_reconnecting') : t('staff_connecting');
  element.hidden = state === 'connected';
}

function connect() {
  socket?.disconnect();
  setConnection('connecting');
  socket = window.io({ reconnectionDelayMax: 10000 });
  reconnectAfterStop(socket);
  socket.on('connect', () => {
    setConnection('connected');
    if (call.session) reconnectVideo(); // a new socket: offer again, the server re-enters us
  });
  socket.on('disconnect', (reason) => {
    if (!loggingOut && reason !== 'io client disconnect') setConnection('reconnecting');
  });
  socket.on('connect_error', (error) => {
    if (error?.message === 'unauthenticated') {
      socket.disconnect();
      showLogin(t('err.unauthenticated'));
      return;
    }
    setConnection('reconnecting');
    if (!socket.active) setTimeout(() => socket?.connect(), 5000);
  });
  socket.on('dashboard', onDashboard);
  socket.on('ticket', onTicket);
  socket.on('connectivity', onConnectivity);
  socket.on('presence', onPresence);
  socket.on('load', onLoad);
  socket.on('media_end', onMediaEnd);
  socket.on('invitation', onInvitation);
}

function onDashboard(dashboard) {
  if (dashboard.transfer_targets) transferTargets = dashboard.transfer_targets;
  if (dashboard.timezone) timezone = dashboard.timezone;
  departments.clear();
  for (const d of dashboard.departments) {
    Object.assign(displayNames, d.clerk_names || {});
    departments.set(d.id, { ...d, tickets: [...d.tickets] });
  }
  const mine = dashboard.departments.map((d) => d.clerks?.[clerk.username]).find(Boolean);
  if (mine) myPresence = mine;
  renderAll();
  // A reload during a consultation: back into it.
  const active = myActiveTicket();
  if (active && !call.ticketId) joinConsultation(active.id);
  else renderConsultPanel();
}

function onTicket({ kind, ticket, previous_department: previousDepartment }) {
  for (const d of departments.values()) d.tickets = d.tickets.filter((x) => x.id !== ticket.id);
  const home = departments.get(ticket.department);
  if (home && LIVE.has(ticket.state)) home.tickets.push(ticket);
  const arrived = kind === 'joined' || (kind === 'transferred' && previousDepartment !== ticket.department);
  if (arrived && home) {
    chime([523, 784]);
    if (document.hidden) notify(t('new_arrival', { department: home.name }), '', `sps-arrival-${home.id}`);
  }
  renderDepartment(ticket.department);
  if (previousDepartment && previousDepartment !== ticket.department) renderDepartment(previousDepartment);
  if (ticket.id === call.ticketId) {
    if (!ACTIVE.has(ticket.state)) endConsultation();
    else renderConsultPanel();
  }
}

/** Waiting pages that went away or came back, one message per department and interval. */
function onConnectivity({ department, tickets }) {
  const d = departments.get(department);
  if (!d) return;
  d.tickets = d.tickets.map((x) => (x.id in tickets ? { ...x, disconnected_at: tickets[x.id] } : x));
  renderDepartment(department);
}

function onPresence({ username, display_name: displayName, status, departments: serves }) {
  if (displayName) displayNames[username] = displayName;
  if (username === clerk?.username) myPresence = status;
  for (const id of serves || []) {
    const d = departments.get(id);
    if (!d) continue;
    d.clerks = { ...d.clerks };
    if (status === 'offline') delete d.clerks[username];
    else d.clerks[username] = status;
    renderDepartment(id);
  }
  renderPresence();
  call.view?.refreshInvite();
}

function onLoad(load) {
  const d = departments.get(load.id);
  if (!d) return;
  // A load's ``appointments`` says whether the department offers bookings (a boolean); the dashboard's is
  // the day's list: keep the list.
  const { tickets, clerks, appointments } = d;
  departments.set(load.id, { ...d, ...load, tickets, clerks, appointments });
  renderDepartment(load.id);
}

/** Emit a staff action; resolves to the ack, or null after showing what went wrong. */
function act(event, payload, { errorBox = $('action-error') } = {}) {
  return new Promise((resolve) => {
    if (!socket?.connected) {
      showActionError(t('err.network'), errorBox);
      resolve(null);
      return;
    }
    const done = (err, ack) => {
      if (err) showActionError(t('err.network'), errorBox);
      else if (ack?.error) showActionError(errorMessage(ack.error), errorBox);
      else {
        say(errorBox, '');
        resolve(ack);
        return;
      }
      resolve(null);
    };
    if (payload === undefined) socket.timeout(ACK_TIMEOUT_MS).emit(event, done);
    else socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, done);
  });
}

function showActionError(text, box) {
  // role="alert" announces it; focus stays where the clerk is working.
  say(box, text);
}

function announce(text) {
  $('action-status').textContent = text;
}

function applyAck(ack) {
  if (ack?.ticket) onTicket({ kind: 'ack', ticket: ack.ticket, previous_department: null });
}

// -- rendering --------------------------------------------------------------------------------------

function serverNow() {
  return (Date.now() + clockOffsetMs) / 1000;
}

function duration(seconds) {
  const minutes = Math.floor(Math.max(0, seconds) / 60);
  if (minutes < 1) return t('under_minute');
  if (minutes < 60) return t('minutes_short', { n: minutes });
  return t('hours_short', { h: Math.floor(minutes / 60), m: minutes % 60 });
}

function sinceText(epoch) {
  return t('waited', { t: duration(serverNow() - epoch) });
}

function nameOf(username) {
  return displayNames[username] || username;
}

function ticketLabel(ticket) {
  return ticket.name || t('ticket_number', { n: ticket.seq });
}

function button(label, action, ticket, { primary = false, danger = false, department } = {}) {
  const classes = ['button'];
  if (primary) classes.push('button--primary');
  if (danger) classes.push('button--danger');
  return h(
    'button',
    {
      type: 'button',
      class: classes.join(' '),
      dataset: { action, ticket: ticket?.id ?? '', department: department ?? '', focusKey: `${action}:${ticket?.id ?? department}` },
      'aria-label': ticket ? `${label}: ${ticketLabel(ticket)}` : null,
    },
    label,
  );
}

// -- the called citizen's time to answer: "no-show" only after it (server: answer_seconds) --

function clockText(seconds) {
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

/** Whole seconds the called citizen still has to answer (0: over), by the server's clock. */
function answerLeft(ticket) {
  const seconds = departments.get(ticket.department)?.answer_seconds ?? 0;
  return Math.max(0, Math.ceil((ticket.called_at ?? 0) + seconds - serverNow()));
}

function noShowButton(ticket) {
  const control = button(t('no_show_action'), 'no_show', ticket);
  if (answerLeft(ticket) > 0) {
    control.disabled = true;
    control.title = t('staff_no_show_later');
  }
  return control;
}

/** Shown every second, never announced: the clerk hears once when it is over (tickAnswers). */
function answerCountdown(ticket) {
  const left = answerLeft(ticket);
  return h(
    'p',
    { class: `ticket__countdown${left ? '' : ' ticket__countdown--over'}`, dataset: { answerTicket: ticket.id } },
    left ? t('staff_answer_left', { time: clockText(left) }) : t('staff_answer_over'),
  );
}

const answersRunning = new Set(); // `${ticket}:${called_at}` of countdowns seen running

function tickAnswers() {
  const over = new Map();
  for (const element of document.querySelectorAll('[data-answer-ticket]')) {
    const ticket = findTicket(element.dataset.answerTicket);
    if (!ticket || ticket.state !== 'called') continue;
    const left = answerLeft(ticket);
    const text = left ? t('staff_answer_left', { time: clockText(left) }) : t('staff_answer_over');
    if (element.textContent !== text) element.textContent = text;
    element.classList.toggle('ticket__countdown--over', !left);
    const key = `${ticket.id}:${ticket.called_at}`;
    if (left) answersRunning.add(key);
    else if (answersRunning.delete(key)) over.set(ticket.id, ticket);
  }
  for (const ticket of over.values()) {
    renderDepartment(ticket.department); // the no-show button becomes usable
    if (call.ticketId === ticket.id) renderConsultPanel();
    if (ticket.clerk === clerk?.username) announce(t('staff_answer_ended', { name: ticketLabel(ticket) }));
  }
}

setInterval(tickAnswers, 1000);

function ticketItem(ticket) {
  const mine = ticket.clerk === clerk.username;
  const language = data.languages[ticket.language] || ticket.language;
  const transferredFrom = ticket.transferred_from
    ? h(
        'p',
        { class: 'ticket__transfer' },
        t('transferred_from', { department: departmentNames[ticket.transferred_from] || ticket.transferred_from }),
        ticket.transfer_note ? `: ${ticket.transfer_note}` : '',
      )
    : null;
  const holder = ticket.clerk_name || nameOf(ticket.clerk);
  let state = null;
  if (ticket.state === 'called') state = mine ? t('called_by_me') : t('called_state', { clerk: holder });
  if (ticket.state === 'in_consultation') state = mine ? t('consultation_mine') : t('consultation_state', { clerk: holder });
  const actions = [];
  if (ticket.state === 'waiting') {
    actions.push(button(t('call'), 'call', ticket));
  } else if (mine) {
    if (ticket.state === 'called') actions.push(button(t('start'), 'start', ticket, { primary: true }));
    actions.push(button(t('finish'), 'finish', ticket, { primary: ticket.state === 'in_consultation' }));
    if (ticket.state === 'called') actions.push(noShowButton(ticket));
    actions.push(button(t('return'), 'return', ticket));
    actions.push(button(t('transfer'), 'transfer', ticket));
    if (call.ticketId !== ticket.id) actions.push(button(t('media.open_video'), 'video', ticket));
  }
  return h(
    'li',
    { class: `ticket ticket--${ticket.state}${mine ? ' ticket--mine' : ''}`, dataset: { ticketId: ticket.id } },
    h(
      'div',
      { class: 'ticket__main' },
      h(
        'p',
        { class: 'ticket__name' },
        h('strong', {}, ticket.name || t('anonymous')),
        ' ',
        h('span', { class: 'muted' }, t('ticket_number', { n: ticket.seq })),
        ticket.interpreter ? [' ', h('span', { class: 'badge badge--info' }, t('interpreter'))] : null,
        ticket.appointment_at ? [' ', h('span', { class: 'badge badge--info' }, t('appointment_badge', { time: appointmentTime(ticket.appointment_at) }))] : null,
        // A new ticket counts as "not connected since it joined" until its page connects (it expires after
        // the grace period otherwise): say that, not that a connection was lost.
        ticket.disconnected_at
          ? [' ', h('span', { class: 'badge badge--warn' }, t(ticket.disconnected_at === ticket.arrived_at ? 'not_connected_yet' : 'disconnected'))]
          : null,
      ),
      h('p', { class: ticket.concern ? 'ticket__concern' : 'ticket__concern muted' }, ticket.concern || t('no_concern')),
      h(
        'p',
        { class: 'ticket__meta' },
        h('span', { lang: ticket.language }, language),
        ' · ',
        h('span', { dataset: { since: String(ticket.arrived_at) } }, sinceText(ticket.arrived_at)),
      ),
      transferredFrom,
      state ? h('p', { class: 'ticket__state' }, state) : null,
      ticket.state === 'called' ? answerCountdown(ticket) : null,
    ),
    actions.length ? h('div', { class: 'ticket__actions' }, actions) : null,
  );
}

/** "10:30" of a booked appointment, in the municipality's time zone (helper appointments). */
function appointmentTime(epoch) {
  return new Intl.DateTimeFormat(document.documentElement.lang || 'de', { hour: '2-digit', minute: '2-digit', timeZone: timezone }).format(new Date(epoch * 1000));
}

/** The department's appointments today: time, name, state (the dashboard payload's ``appointments``). */
function appointmentList(appointments) {
  return h('ul', { class: 'appointments' }, appointments.map((a) =>
    h('li', {}, h('strong', {}, a.time), ' ', a.name || t('anonymous'), ' – ', t(`appt.state.${a.state}`))));
}

function renderDepartment(id) {
  const d = departments.get(id);
  if (!d) return;
  const waiting = d.tickets.filter((x) => x.state === 'waiting').sort((a, b) => a.seq - b.seq);
  const active = d.tickets.filter((x) => ACTIVE.has(x.state)).sort((a, b) => (a.called_at ?? 0) - (b.called_at ?? 0));
  const range = d.staffed ? estimateText(d.estimate_minutes) : null;
  const colleagues = Object.entries(d.clerks || {}).sort(([a], [b]) => nameOf(a).localeCompare(nameOf(b)));
  const headingId = `panel-${id}`;
  const panel = h(
    'section',
    { class: 'panel', 'aria-labelledby': headingId, dataset: { department: id } },
    h(
      'div',
      { class: 'panel__head' },
      h('h2', { id: headingId, tabindex: '-1' }, d.name),
      h('span', { class: `badge ${d.open ? 'badge--open' : 'badge--closed'}` }, d.open ? t('open') : t('closed')),
      h('p', { class: 'panel__facts' }, tn('waiting', waiting.length), ' · ', range ? t('estimate', { range }) : t('no_clerk')),
      button(t('call_next'), 'call_next', null, { primary: true, department: id }),
    ),
    h(
      'div',
      { class: 'panel__body' },
      h(
        'div',
        { class: 'panel__queue' },
        h('h3', {}, `${t('queue')} (${waiting.length})`),
        waiting.length ? h('ol', { class: 'tickets' }, waiting.map(ticketItem)) : h('p', { class: 'muted' }, t('queue_empty')),
      ),
      h(
        'div',
        { class: 'panel__side' },
        h('h3', {}, t('active')),
        active.length ? h('ul', { class: 'tickets' }, active.map(ticketItem)) : h('p', { class: 'muted' }, t('no_active')),
        d.appointments?.length ? [h('h3', {}, t('appointments_today')), appointmentList(d.appointments)] : null,
        h('h3', {}, t('colleagues')),
        colleagues.length
          ? h(
              'ul',
              { class: 'colleagues' },
              colleagues.map(([username, status]) =>
                h(
                  'li',
                  { class: `colleague colleague--${status}` },
                  h('span', { class: 'colleague__dot', 'aria-hidden': 'true' }),
                  username === clerk.username ? `${nameOf(username)} (${t('you')})` : nameOf(username),
                  ': ',
                  t(`presence.${status}`),
                ),
              ),
            )
          : h('p', { class: 'muted' }, t('no_colleagues')),
      ),
    ),
  );
  // Re-rendering must not throw away keyboard focus: put it back on the same control if it still exists.
  const focusKey = document.activeElement?.dataset?.focusKey;
  const old = panels.querySelector(`.panel[data-department="${CSS.escape(id)}"]`);
  const focusWasHere = old?.contains(document.activeElement);
  if (old) old.replaceWith(panel);
  else panels.append(panel);
  if (focusWasHere) {
    const again = focusKey && panel.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    (again || panel.querySelector('h2')).focus();
  }
}

function renderPresence() {
  document.querySelector('[data-field="presence"]').textContent = t(`presence.${myPresence}`);
  const toggle = $('presence-toggle');
  toggle.textContent = myPresence === 'away' ? t('set_available') : t('set_away');
}

function renderAll() {
  panels.replaceChildren();
  for (const id of departments.keys()) renderDepartment(id);
  renderPresence();
}

setInterval(() => {
  for (const element of panels.querySelectorAll('[data-since]')) {
    element.textContent = sinceText(Number(element.dataset.since));
  }
}, TICK_MS);

// -- actions ----------------------------------------------------------------------------------------

function findTicket(id) {
  for (const d of departments.values()) {
    const ticket = d.tickets.find((x) => x.id === id);
    if (ticket) return ticket;
  }
  return null;
}

async function onAction(event) {
  const target = event.target.closest('button[data-action]');
  if (!target) return;
  unlockAudio();
  const { action, ticket: ticketId, department } = target.dataset;
  if (action === 'transfer') {
    openTransfer(findTicket(ticketId));
    return;
  }
  if (action === 'video') {
    joinConsultation(ticketId);
    return;
  }
  target.disabled = true;
  const payload = action === 'call_next' ? { department } : { ticket: ticketId };
  const ack = await act(action, payload);
  target.disabled = false;
  if (!ack) return;
  applyAck(ack);
  if (action === 'call_next' || action === 'call') {
    const seconds = departments.get(ack.ticket.department)?.answer_seconds;
    const answerTime = seconds ? ` ${t('staff_answer_started', { seconds })}` : '';
    announce(`${t('done_called', { name: ticketLabel(ack.ticket) })}${answerTime}`);
    // The consultation panel opens (video connects while the citizen answers); keyboard users
    // continue where the work goes on: the called citizen's "Start" button.
    joinConsultation(ack.ticket.id);
    panels.querySelector(`[data-focus-key="${CSS.escape(`start:${ack.ticket.id}`)}"]`)?.focus();
  } else {
    announce(t('done_action'));
  }
}

panels.addEventListener('click', onAction);
$('consult-actions').addEventListener('click', onAction);

$('presence-toggle').addEventListener('click', async () => {
  const status = myPresence === 'away' ? 'available' : 'away';
  const ack = await act('presence', { status });
  if (!ack) return;
  myPresence = ack.status || status;
  for (const d of departments.values()) {
    if (d.clerks && clerk.username in d.clerks) d.clerks = { ...d.clerks, [clerk.username]: myPresence };
  }
  renderAll();
  announce(t(`presence.${myPresence}`));
});

$('sound').addEventListener('click', async () => {
  unlockAudio();
  chime([523, 784]);
  await askNotificationPermission();
  $('sound').hidden = true;
  announce(t('sound_on'));
});

// -- video consultation -------------------------------------------------------------------------------

const MAX_RETRIES = 3;
const call = { ticketId: null, invitedBy: null, session: null, view: null, retries: 0, timer: null };
const invitations = new Map(); // ticket id -> invitation

function myActiveTicket() {
  const mine = [];
  for (const d of departments.values()) {
    for (const ticket of d.tickets) if (ACTIVE.has(ticket.state) && ticket.clerk === clerk?.username) mine.push(ticket);
  }
  return mine.sort((a, b) => (b.called_at ?? 0) - (a.called_at ?? 0))[0] || null;
}

function inviteCandidates() {
  const seen = new Map();
  for (const d of departments.values()) {
    for (const [username, status] of Object.entries(d.clerks || {})) {
      if (username === clerk?.username || status === 'offline') continue;
      seen.set(username, status);
    }
  }
  return [...seen]
    .map(([username, status]) => ({ username, name: nameOf(username), label: `${nameOf(username)} – ${t(`presence.${status}`)}` }))
    .sort((a, b) => a.label.localeCompare(b.label));
}

function renderConsultPanel() {
  const panel = $('consult-panel');
  if (!call.ticketId) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  const ticket = findTicket(call.ticketId);
  const heading = $('consult-heading');
  heading.textContent = call.invitedBy
    ? t('media.consult_invited', { from: call.invitedBy })
    : t('media.consult_with', { name: ticket ? ticketLabel(ticket) : '' });
  const facts = panel.querySelector('[data-field="consult-facts"]');
  facts.textContent = ticket ? [ticket.concern || t('no_concern'), data.languages[ticket.language] || ticket.language].join(' · ') : '';
  const actions = [];
  if (ticket && ticket.clerk === clerk?.username && ACTIVE.has(ticket.state)) {
    if (ticket.state === 'called') actions.push(answerCountdown(ticket), button(t('start'), 'start', ticket));
    actions.push(button(t('finish'), 'finish', ticket, { primary: !call.session }));
    if (ticket.state === 'called') actions.push(noShowButton(ticket));
    actions.push(button(t('return'), 'return', ticket));
    actions.push(button(t('transfer'), 'transfer', ticket));
  }
  $('consult-actions').replaceChildren(...actions);
}

function onVideoState(state) {
  if (!call.view) return;
  if (state === 'connected') {
    call.retries = 0;
    call.view.announce(t('media.connected'));
  } else if (state === 'failed') {
    if (call.retries >= MAX_RETRIES) {
      hangUp(t('media.problem.network'));
      return;
    }
    call.view.announce(t('media.reconnecting'));
    clearTimeout(call.timer);
    call.timer = setTimeout(reconnectVideo, 1000 * 2 ** call.retries);
    call.retries += 1;
  }
}

async function reconnectVideo() {
  if (!call.session || !call.ticketId) return;
  try {
    await call.session.connect({ ticket: call.ticketId });
  } catch (error) {
    call.view?.announce(errorMessage(error));
  }
}

/** Whether the ticket's department allows recordings (configured per department by municipal IT). */
function recordingAllowed(ticketId) {
  for (const d of departments.values()) {
    if (d.tickets.some((x) => x.id === ticketId)) return Boolean(data.departments.find((c) => c.id === d.id)?.recording);
  }
  return false;
}

/** Open the consultation panel for a ticket and connect the video (own camera, the citizen, guests). */
async function joinConsultation(ticketId, { invitedBy = null } = {}) {
  if (call.ticketId === ticketId && call.session) return;
  if (call.ticketId) endConsultation({ tell: true });
  call.ticketId = ticketId;
  call.invitedBy = invitedBy;
  call.retries = 0;
  $('consult-after').hidden = true;
  const session = new MediaSession(socket, {
    onLayout: (slots) => call.view?.setSlots(slots.filter((slot) => slot.participant !== `staff:${clerk.username}`)),
    onState: onVideoState,
  });
  call.session = session;
  call.view = createConsultation($('consult-media'), {
    session,
    socket,
    role: invitedBy ? 'colleague' : 'clerk',
    self: `staff:${clerk.username}`,
    canRecord: !invitedBy && recordingAllowed(ticketId),
    canShare: Boolean(navigator.mediaDevices?.getDisplayMedia),
    invite: invitedBy
      ? null
      : {
          candidates: inviteCandidates,
          send: async (username) => Boolean(await act('invite', { ticket: ticketId, username })),
        },
    onHangUp: () => hangUp(t('media.hung_up')),
  });
  renderConsultPanel();
  renderAll();
  try {
    const local = await openLocalMedia('full');
    if (call.session !== session) return;
    await session.setStream(local.stream);
    if (local.missing) call.view.announce(t('media.problem.no_camera_fallback'));
  } catch (error) {
    call.view?.announce(t(`media.problem.${error.code}`));
  }
  call.view?.showSelf();
  if (call.session !== session) return;
  try {
    await session.connect({ ticket: ticketId });
  } catch (error) {
    if (call.session === session) hangUp(errorMessage(error));
  }
}

/** Leave the video but keep the panel: the clerk still finishes, returns or transfers the ticket. */
function hangUp(text) {
  const invited = call.invitedBy;
  stopVideo({ tell: true });
  if (invited) {
    call.ticketId = null;
    call.invitedBy = null;
    renderConsultPanel();
    renderAll();
    announce(text);
    return;
  }
  $('consult-after').hidden = false;
  $('consult-after').querySelector('[data-field="consult-after-text"]').textContent = text;
  renderConsultPanel();
  renderAll();
  $('consult-actions').querySelector('button')?.focus();
}

function stopVideo({ tell }) {
  clearTimeout(call.timer);
  call.view?.destroy();
  call.view = null;
  call.session?.dispose({ tell });
  call.session = null;
}

function endConsultation({ tell = false } = {}) {
  stopVideo({ tell });
  call.ticketId = null;
  call.invitedBy = null;
  $('consult-after').hidden = true;
  renderConsultPanel();
  renderAll();
}

function onMediaEnd({ ticket: ticketId }) {
  if (ticketId !== call.ticketId) return;
  const ticket = findTicket(ticketId);
  if (!call.invitedBy && ticket && ACTIVE.has(ticket.state)) hangUp(t('media.ended'));
  else endConsultation();
}

$('consult-reconnect').addEventListener('click', () => {
  const { ticketId, invitedBy } = call;
  if (!ticketId) return;
  call.ticketId = null;
  joinConsultation(ticketId, { invitedBy });
});

function onInvitation(invitation) {
  invitations.set(invitation.ticket, invitation);
  chime([784, 988]);
  notify(t('media.invitation', { from: invitation.from, department: departmentNames[invitation.department] || invitation.department }), '', `sps-invite-${invitation.ticket}`);
  renderInvitations();
}

function renderInvitations() {
  const box = $('invitations');
  box.hidden = invitations.size === 0;
  box.replaceChildren(
    ...[...invitations.values()].map((invitation) => {
      const text = t('media.invitation', {
        from: invitation.from,
        department: departmentNames[invitation.department] || invitation.department,
      });
      const join = h('button', { type: 'button', class: 'button button--primary' }, t('media.join'));
      const decline = h('button', { type: 'button', class: 'button button--quiet' }, t('media.decline'));
      join.addEventListener('click', () => {
        invitations.delete(invitation.ticket);
        renderInvitations();
        joinConsultation(invitation.ticket, { invitedBy: invitation.from });
        $('consult-heading').focus();
      });
      decline.addEventListener('click', () => {
        invitations.delete(invitation.ticket);
        renderInvitations();
      });
      return h('div', { class: 'notice notice--info invitation', role: 'alert' }, h('p', {}, text), h('div', { class: 'button-row button-row--start' }, join, decline));
    }),
  );
}

// -- transfer dialog --------------------------------------------------------------------------------

const dialog = $('transfer-dialog');
const transferForm = $('transfer-form');
let transferring = null;

let confirmingClosed = null; // the closed department the clerk was warned about and may now confirm
const transferSubmit = transferForm.querySelector('button[value="transfer"]');
const transferSubmitLabel = transferSubmit.textContent;

/** Open now, or closed and when it opens next: from the dashboard (`transfer_targets`), refreshed on opening. */
function targetOf(id) {
  return transferTargets.find((d) => d.id === id) || null;
}

function openingPhrase(target) {
  return target.next_opening
    ? t('opens_lower', { when: whenText(target.next_opening, timezone) })
    : t('opens_unknown_lower');
}

function renderTransferOptions(ticket) {
  const select = $('transfer-department');
  const chosen = select.value;
  const known = transferTargets.length ? transferTargets : data.departments.map((d) => ({ ...d, open: true }));
  select.replaceChildren(
    ...known
      .filter((d) => d.id !== ticket.department)
      .map((d) => h(
        'option',
        { value: d.id, dataset: { open: String(d.open) } },
        d.open ? t('transfer_open', { department: d.name }) : t('transfer_closed', { department: d.name, opens: openingPhrase(d) }),
      )),
  );
  if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function resetTransferConfirmation() {
  confirmingClosed = null;
  say($('transfer-warning'), '');
  transferSubmit.textContent = transferSubmitLabel;
}

function openTransfer(ticket) {
  if (!ticket) return;
  transferring = ticket;
  $('transfer-department').value = '';
  renderTransferOptions(ticket);
  transferForm.querySelector('[data-field="who"]').textContent = `${ticketLabel(ticket)} · ${departmentNames[ticket.department] || ticket.department}`;
  $('transfer-note').value = '';
  say($('transfer-error'), '');
  resetTransferConfirmation();
  dialog.showModal();
  // Opening hours move on while a dashboard stays open for hours: fresh open/closed states for the list.
  request('GET', '/api/departments').then(({ body }) => {
    transferTargets = body.departments.map(({ id, name, open, next_opening: next, closed_message: message }) => (
      { id, name, open, next_opening: next ?? null, closed_message: message ?? null }));
    if (dialog.open && transferring === ticket) renderTransferOptions(ticket);
  }).catch(() => {});
}

$('transfer-department').addEventListener('change', resetTransferConfirmation);

/** Warn before transferring to a closed department; the second press confirms. */
function warnClosed(target) {
  confirmingClosed = target.id;
  say($('transfer-warning'), t('transfer_confirm', { department: target.name, opens: openingPhrase(target) }));
  transferSubmit.textContent = t('transfer_confirm_submit');
}

function emitTransfer(payload) {
  return new Promise((resolve) => {
    if (!socket?.connected) {
      resolve({ error: { code: 'network' } });
      return;
    }
    socket.timeout(ACK_TIMEOUT_MS).emit('transfer', payload, (err, ack) => resolve(err ? { error: { code: 'network' } } : ack));
  });
}

transferForm.addEventListener('submit', async (event) => {
  if (event.submitter?.value !== 'transfer') return; // "cancel" closes the dialog
  event.preventDefault();
  const department = $('transfer-department').value;
  const target = targetOf(department);
  if (target && !target.open && confirmingClosed !== department) {
    warnClosed(target);
    return;
  }
  say($('transfer-error'), '');
  transferSubmit.disabled = true;
  const ack = await emitTransfer({
    ticket: transferring.id, department, note: $('transfer-note').value.trim(), confirm_closed: confirmingClosed === department,
  });
  transferSubmit.disabled = false;
  if (ack?.error) {
    // Closed since the list was made: the server asks for the same confirmation.
    if (ack.error.code === 'department_closed' && target && confirmingClosed !== department) {
      target.open = false;
      renderTransferOptions(transferring);
      warnClosed(target);
    } else {
      say($('transfer-error'), errorMessage(ack.error));
    }
    return;
  }
  dialog.close();
  resetTransferConfirmation();
  applyAck(ack);
  announce(t('done_action'));
});

// Permission from an earlier visit: sound needs no button (any click unlocks it), notifications work.
if ('Notification' in window && Notification.permission === 'granted') $('sound').hidden = true;

restoreSession();
