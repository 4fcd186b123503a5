// The waiting page: position and estimate live from the compact `queue` update, the call, the end.
import {
  FINAL_STATES,
  askNotificationPermission,
  chime,
  errorMessage,
  estimateText,
  forgetToken,
  notify,
  pageData,
  request,
  say,
  storeToken,
  storedToken,
  t,
  tn,
  unlockAudio,
} from './common.js';
import { estimateWait, positionIn } from './estimate.js';

const ACK_TIMEOUT_MS = 10000;
const data = pageData();
const baseTitle = document.title;
const $ = (id) => document.getElementById(id);
const views = {
  waiting: $('waiting-view'),
  called: $('called-view'),
  consultation: $('consultation-view'),
  final: $('final-view'),
};
const field = (name) => document.querySelector(`[data-field="${name}"]`);
const connection = $('connection');
const positionText = $('position-text');

let ticket = null;
const queues = {}; // department id -> its latest `queue` update
let socket = null;

// The fragment carries the token from the check-in (and survives a bookmark); localStorage keeps it
// for a reload without the fragment.
const fromFragment = decodeURIComponent(window.location.hash.slice(1));
const token = fromFragment || storedToken();
if (fromFragment) storeToken(fromFragment);

function show(view) {
  for (const [name, element] of Object.entries(views)) element.hidden = name !== view;
  $('controls').hidden = !(view === 'waiting' || view === 'called');
}

function setConnection(state) {
  connection.dataset.state = state;
  connection.textContent = { connecting: t('connecting'), connected: t('connected'), reconnecting: t('reconnecting') }[state];
  connection.hidden = state === 'connected';
}

function notice(text) {
  say($('notice'), text);
}

function renderWaiting() {
  const queue = queues[ticket.department];
  const fromQueue = queue ? positionIn(queue.w, ticket.seq) : null;
  const position = fromQueue ?? ticket.position;
  field('department').textContent = ticket.department_name;
  field('number').textContent = String(ticket.seq);
  field('position-number').textContent = position ? String(position) : '–';
  // Only touch the live region when the sentence changes: each change is announced.
  const sentence = !position ? t('position_unknown') : position === 1 ? t('position_next') : t('position', { n: position });
  if (positionText.textContent !== sentence) positionText.textContent = sentence;
  document.title = position ? `(${position}) ${baseTitle}` : baseTitle;

  const clerks = queue ? queue.a + queue.b : null;
  const range = position && clerks ? estimateWait(position, clerks, queue.s) : null;
  field('estimate').textContent = estimateText(range) ?? '–';
  let status = '';
  if (queue && !queue.open) status = t('closed_now');
  else if (clerks === 0) status = t('no_clerk_wait');
  else if (clerks) status = tn('clerks', clerks);
  field('clerks').textContent = status;
}

function alertCalled() {
  const text = ticket.clerk_name ? t('called_by', { clerk: ticket.clerk_name }) : t('called_by_anonymous');
  $('alert').textContent = `${t('called_title')} ${text}`;
  document.title = t('document_called');
  chime([660, 880, 1100]);
  setTimeout(() => chime([660, 880, 1100]), 1600);
  navigator.vibrate?.([300, 150, 300]);
  notify(t('called_title'), t('notification_called', { clerk: ticket.clerk_name || '' }).trim(), 'sps-called');
  $('answer').focus();
}

function finish(message) {
  notice('');
  show('final');
  field('final').textContent = message;
  $('alert').textContent = '';
  document.title = baseTitle;
  forgetToken(token);
  connection.hidden = true;
  socket?.disconnect();
}

function applyTicket(next) {
  const previous = ticket;
  ticket = next;
  if (next.id !== data.ticket_id) {
    // The stored token belongs to another ticket than the URL names: show the right address.
    data.ticket_id = next.id;
    history.replaceState(null, '', `/wait/${encodeURIComponent(next.id)}#${token}`);
  }
  switch (next.state) {
    case 'waiting': {
      if (previous && previous.department !== next.department) {
        notice(t('transferred', { department: next.department_name }));
        socket?.emit('subscribe', (ack) => ack?.ticket && applyTicket(ack.ticket));
      } else if (previous && (previous.state === 'called' || previous.state === 'in_consultation')) {
        notice(t('returned'));
      }
      $('alert').textContent = '';
      show('waiting');
      renderWaiting();
      break;
    }
    case 'called': {
      notice('');
      field('called-by').textContent = next.clerk_name
        ? t('called_by', { clerk: next.clerk_name })
        : t('called_by_anonymous');
      show('called');
      if (previous?.state !== 'called') alertCalled();
      break;
    }
    case 'in_consultation': {
      notice('');
      $('alert').textContent = '';
      document.title = baseTitle;
      field('consultation').textContent = next.clerk_name
        ? t('in_consultation', { clerk: next.clerk_name })
        : t('in_consultation_anonymous');
      show('consultation');
      break;
    }
    default:
      if (FINAL_STATES.has(next.state)) finish(t(next.state));
  }
}

function unknownTicket() {
  forgetToken(token);
  notice('');
  show('final');
  field('final').textContent = t('unknown_ticket');
  connection.hidden = true;
}

/** Send a citizen action over the socket, or over HTTP while the socket is down. */
async function act(event, method, url) {
  if (socket?.connected) {
    return new Promise((resolve, reject) => {
      socket.timeout(ACK_TIMEOUT_MS).emit(event, (err, ack) => {
        if (err) reject({ code: 'network' });
        else if (ack?.error) reject(ack.error);
        else resolve(ack.ticket);
      });
    });
  }
  const { body } = await request(method, url, { token });
  return body.ticket;
}

function connect() {
  setConnection('connecting');
  socket = window.io({ auth: { token }, reconnectionDelayMax: 10000 });
  socket.on('connect', () => setConnection('connected'));
  socket.on('disconnect', (reason) => {
    if (reason !== 'io client disconnect') setConnection('reconnecting');
  });
  socket.on('connect_error', (error) => {
    if (error?.message === 'ticket_not_found') {
      socket.disconnect();
      unknownTicket();
      return;
    }
    setConnection('reconnecting');
    // A refusal by the server (not a network failure) is not retried by the client on its own.
    if (!socket.active) setTimeout(() => socket.connect(), 5000);
  });
  socket.on('ticket', applyTicket);
  socket.on('queue', (update) => {
    queues[update.d] = update;
    if (ticket?.state === 'waiting' && update.d === ticket.department) renderWaiting();
  });
}

$('answer').addEventListener('click', async () => {
  const button = $('answer');
  button.disabled = true;
  say($('answer-error'), '');
  try {
    applyTicket(await act('answer', 'POST', '/api/tickets/me/answer'));
  } catch (error) {
    if (ticket?.state !== 'called') return; // the ticket moved on meanwhile; its own event said so
    say($('answer-error'), errorMessage(error));
  } finally {
    button.disabled = false;
  }
});

$('leave').addEventListener('click', () => $('leave-dialog').showModal());
$('leave-dialog').addEventListener('close', async () => {
  if ($('leave-dialog').returnValue !== 'leave') return;
  try {
    applyTicket(await act('leave', 'DELETE', '/api/tickets/me'));
  } catch (error) {
    // The `ticket` event may have ended the page (and its socket) before the acknowledgement came.
    if (!FINAL_STATES.has(ticket?.state)) notice(errorMessage(error));
  }
});

$('notify').addEventListener('click', async () => {
  unlockAudio();
  chime([660, 880]); // so that people know what to listen for
  const permission = await askNotificationPermission();
  $('notify-status').textContent = permission === 'denied' ? t('notify_denied') : t('notify_on');
  if (permission !== 'denied') $('notify').hidden = true;
});

if ('Notification' in window && Notification.permission === 'granted') {
  $('notify').hidden = true;
  $('notify-status').textContent = t('notify_on');
}

// Keep the token when switching the page language.
for (const link of document.querySelectorAll('[data-lang-link]')) {
  if (token) link.href = `${link.getAttribute('href')}#${token}`;
}

if (!token) {
  unknownTicket();
} else if (typeof window.io !== 'function') {
  setConnection('reconnecting');
  notice(t('err.network'));
} else {
  connect();
}
