// The department list: live figures every 15 s, and a way back for someone who is already waiting.
import { estimateText, liveTicket, openingText, request, t, tn } from './common.js';

const REFRESH_MS = 15000;
const list = document.getElementById('departments');

function updateCard(card, d) {
  const field = (name) => card.querySelector(`[data-field="${name}"]`);
  const status = field('status');
  status.textContent = d.open ? t('open') : t('closed');
  status.classList.toggle('badge--open', d.open);
  status.classList.toggle('badge--closed', !d.open);
  field('waiting').textContent = tn('waiting', d.waiting);
  const estimate = field('estimate');
  const range = d.open && d.staffed ? estimateText(d.estimate_minutes) : null;
  // Closed: when it opens, not whether someone is on duty.
  if (!d.open) estimate.textContent = openingText(d.next_opening, list.dataset.timezone);
  else estimate.textContent = range ? t('estimate', { range }) : t('no_clerk');
  estimate.classList.toggle('muted', d.open && !range);
  const closure = field('closure');
  closure.textContent = d.open ? '' : d.closed_message || '';
  closure.hidden = !closure.textContent;
  field('full').hidden = !(d.open && d.queue_full);
  field('join').hidden = !d.open || d.queue_full || document.body.classList.contains('is-queued');
}

async function refresh() {
  if (!list || document.hidden) return;
  try {
    const { body } = await request('GET', '/api/departments');
    for (const d of body.departments) {
      const card = list.querySelector(`[data-department="${CSS.escape(d.id)}"]`);
      if (card) updateCard(card, d);
    }
  } catch {
    /* keep the last figures; the next round tries again */
  }
}

async function showLiveTicket() {
  const live = await liveTicket();
  if (!live) return;
  const banner = document.getElementById('already');
  banner.querySelector('[data-field="text"]').textContent = t('already', { department: live.ticket.department_name });
  banner.querySelector('[data-field="link"]').href = `/wait/${encodeURIComponent(live.ticket.id)}#${live.token}`;
  banner.hidden = false;
  // One place at a time: hide the join buttons rather than letting the server refuse later.
  document.body.classList.add('is-queued');
  for (const link of document.querySelectorAll('[data-field="join"]')) link.hidden = true;
}

showLiveTicket();
setInterval(refresh, REFRESH_MS);
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});
