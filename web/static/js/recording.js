// Recording consent in a consultation, the same for citizen, clerk and invited colleague: every
// participant is asked in their own browser (a dialog with the exact text, purpose and retention), an
// "Aufnahme läuft" indicator for everyone (announced to screen readers), withdrawal at any time, and
// for the clerk holding the consultation a button to ask for a recording and to stop it.
import { h, t } from './common.js';
import { ask } from './media.js';

/**
 * Build the controls into the consultation's `root`. Options: `socket`, `canRequest` (the clerk holding
 * the consultation, in a department that allows recordings), `announce(text)` (the consultation's
 * status line), `self` (own participant id, to find the own answer).
 */
export function createRecording(root, { socket, canRequest = false, announce, self = null }) {
  let current = null; // the recording as the server last told it
  let asked = null; // the pending consent request for this browser
  let ownAnswer = null;

  // The live region stays in the page and the indicator comes and goes inside it: a region that is
  // itself unhidden together with its text is not announced reliably. It speaks for the live states;
  // the consultation's status line only says when a recording ended (no state is announced twice).
  const indicator = h('p', { class: 'rec-indicator', hidden: true });
  const region = h('div', { class: 'rec-live', role: 'status' }, indicator);
  const requestButton = canRequest
    ? h('button', { type: 'button', class: 'button', 'data-action': 'recording-request' }, t('rec.request'))
    : null;
  const stopButton = canRequest
    ? h('button', { type: 'button', class: 'button', 'data-action': 'recording-stop', hidden: true }, t('rec.stop'))
    : null;
  const withdrawButton = h('button', { type: 'button', class: 'button', 'data-action': 'recording-withdraw', hidden: true }, t('rec.withdraw'));
  const error = h('p', { class: 'notice notice--error', role: 'alert', hidden: true });
  const box = h('div', { class: 'rec-controls', role: 'group', 'aria-label': t('rec.group') }, region, requestButton, stopButton, withdrawButton, error);

  const dialogId = `rec-${Math.random().toString(36).slice(2, 8)}`;
  const dialogText = h('div', { class: 'rec-dialog__text', id: `${dialogId}-text` });
  const dialogHeading = h('h2', { class: 'h3', id: `${dialogId}-heading`, tabindex: '-1' }, t('rec.ask_title'));
  // "Ja" and "Nein" look alike: consent is only free when declining is as easy and as prominent.
  const agreeButton = h('button', { type: 'button', class: 'button', 'data-action': 'recording-agree' }, t('rec.agree'));
  const declineButton = h('button', { type: 'button', class: 'button', 'data-action': 'recording-decline' }, t('rec.decline'));
  const dialogError = h('p', { class: 'notice notice--error', role: 'alert', hidden: true });
  const dialog = h(
    'dialog',
    { class: 'rec-dialog', 'aria-labelledby': dialogHeading.id, 'aria-describedby': dialogText.id },
    dialogHeading,
    dialogText,
    dialogError,
    h('div', { class: 'button-row' }, declineButton, agreeButton),
  );
  // Escape must not count as an answer: the request stays open until the participant chooses.
  dialog.addEventListener('cancel', (event) => event.preventDefault());
  // Above the pictures: whoever looks at the call sees that it is being recorded.
  root.prepend(box);
  root.append(dialog);

  function fail(target, err) {
    target.textContent = err?.message ? `${t('rec.failed')} (${err.message})` : t('rec.failed');
    target.hidden = false;
  }

  function render() {
    const state = current?.state || null;
    const live = state && state !== 'stopped';
    indicator.hidden = !live;
    indicator.className = `rec-indicator rec-indicator--${state || 'none'}`;
    indicator.textContent = live ? t(`rec.state.${state}`) : '';
    if (requestButton) requestButton.hidden = Boolean(live);
    if (stopButton) stopButton.hidden = !live;
    // The clerk who can stop the recording gets that one button: two buttons that both end it confuse.
    withdrawButton.hidden = !(live && ownAnswer === 'agreed') || Boolean(stopButton);
  }

  function text(offer) {
    const lang = document.documentElement.lang;
    return offer.texts[lang] || offer.texts.de || Object.values(offer.texts)[0];
  }

  async function answer(agree) {
    if (!asked) return;
    dialogError.hidden = true;
    const offer = asked;
    try {
      const ack = await ask(socket, 'recording_answer', { recording: offer.recording, agree, sha256: text(offer).sha256 });
      ownAnswer = agree ? 'agreed' : 'declined';
      asked = null;
      dialog.close();
      onRecording(ack.recording);
      announce?.(agree ? t('rec.you_agreed') : t('rec.you_declined'));
    } catch (err) {
      if (err.code === 'recording_ended' || err.code === 'recording_not_found') {
        asked = null;
        dialog.close();
        return;
      }
      fail(dialogError, err);
    }
  }
  agreeButton.addEventListener('click', () => answer(true));
  declineButton.addEventListener('click', () => answer(false));

  requestButton?.addEventListener('click', async () => {
    error.hidden = true;
    try {
      const ack = await ask(socket, 'recording_request', {});
      onRecording(ack.recording);
    } catch (err) {
      fail(error, err);
    }
  });
  stopButton?.addEventListener('click', async () => {
    if (!current) return;
    error.hidden = true;
    try {
      onRecording((await ask(socket, 'recording_stop', { recording: current.id })).recording);
    } catch (err) {
      fail(error, err);
    }
  });
  withdrawButton.addEventListener('click', async () => {
    if (!current) return;
    error.hidden = true;
    try {
      onRecording((await ask(socket, 'recording_withdraw', { recording: current.id })).recording);
      ownAnswer = 'withdrawn';
      render();
      announce?.(t('rec.you_withdrew'));
    } catch (err) {
      fail(error, err);
    }
  });

  function onConsent(offer) {
    asked = offer;
    ownAnswer = 'pending';
    dialogText.replaceChildren(...text(offer).text.split('\n').map((line) => h('p', {}, line)));
    dialogError.hidden = true;
    if (!dialog.open) dialog.showModal();
    dialogHeading.focus();
  }

  function onRecording(recording) {
    if (!recording) return;
    const before = current?.state;
    current = recording;
    const mine = self ? recording.participants.find((p) => p.participant === self) : null;
    if (mine) ownAnswer = mine.answer;
    if (recording.state === 'stopped' && asked?.recording === recording.id) {
      asked = null;
      if (dialog.open) dialog.close();
    }
    render();
    if (before !== recording.state && recording.state === 'stopped') {
      announce?.(t(`rec.stopped.${recording.stop_reason || 'stopped'}`));
    }
  }

  socket.on('recording_consent', onConsent);
  socket.on('recording', onRecording);
  render();

  return {
    destroy() {
      socket.off('recording_consent', onConsent);
      socket.off('recording', onRecording);
      if (dialog.open) dialog.close();
      box.remove();
      dialog.remove();
    },
    get state() {
      return current?.state || null;
    },
  };
}
