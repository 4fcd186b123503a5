// /townhall/questions/{id}: what became of one question, in words. The id is the capability; the page
// asks again whenever it comes back into view (the author checks in now and then).
import { errorMessage, pageData, request, t } from './common.js';
import { when } from './townhall_common.js';

const $ = (id) => document.getElementById(id);
const { question: questionId } = pageData();
let eventTitle = null;

async function load() {
  let question;
  try {
    ({ body: { question } } = await request('GET', `/api/townhall/questions/${encodeURIComponent(questionId)}`));
  } catch (error) {
    const box = $('question-error');
    box.textContent = errorMessage(error);
    box.hidden = false;
    $('question-view').hidden = true;
    return;
  }
  $('question-error').hidden = true;
  const sentence = t(`th.q.${question.state}`);
  if ($('question-state').textContent !== sentence) $('question-state').textContent = sentence;
  $('question-state').dataset.state = question.state;
  $('question-merged').hidden = !question.merged_into;
  const answered = question.state === 'answered' && question.answered_at;
  $('question-when').hidden = !answered;
  $('question-when').textContent = answered ? t('th.q.answered_at', { date: when(question.answered_at) }) : '';
  $('question-text').textContent = question.text;
  // Published: straight to the moment the answer starts (the event page seeks its player there).
  const at = question.recording_at;
  $('question-recording-row').hidden = at === null || at === undefined;
  if (at !== null && at !== undefined) {
    $('question-recording').href = `/townhall/${encodeURIComponent(question.event)}?t=${encodeURIComponent(at)}#recording`;
  }
  const link = $('question-event');
  link.href = `/townhall/${encodeURIComponent(question.event)}`;
  if (eventTitle === null) {
    try {
      const { body } = await request('GET', `/api/townhall/events/${encodeURIComponent(question.event)}`);
      eventTitle = body.event.title;
    } catch {
      eventTitle = '';
    }
  }
  link.textContent = eventTitle ? t('th.q.to_event', { title: eventTitle }) : t('th.q.to_event', { title: '' }).replace(/:\s*$/, '');
  $('question-view').hidden = false;
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') load();
});
load();
