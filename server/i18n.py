"""Message catalogs for the pages: German (the default) and English.

Messages are keyed by id. Ids starting with ``js.`` are what the browser scripts need; the pages emit
them (without the prefix) in a JSON block, so the scripts stay language-neutral. Plural forms are
separate ids ending in ``.one`` and ``.other``. Placeholders use ``str.format`` syntax in Python and
the same ``{name}`` syntax in the scripts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFAULT_LANGUAGE = "de"
PAGE_LANGUAGES = ("de", "en")
"""Languages the pages are written in."""

LANGUAGE_NAMES = {
    "de": "Deutsch",
    "en": "English",
    "tr": "Türkçe",
    "ar": "العربية",
    "ru": "Русский",
    "uk": "Українська",
    "pl": "Polski",
    "fr": "Français",
    "es": "Español",
    "it": "Italiano",
    "fa": "فارسی",
}
"""Languages a citizen may ask to be served in, each named in itself (server.queue.core.LANGUAGES)."""

RTL_LANGUAGES = frozenset({"ar", "fa"})

Translate = Callable[..., str]

DE: dict[str, str] = {
    # layout
    "site.name": "Sprechstunde",
    "site.tagline": "Online-Wartezimmer Ihrer Verwaltung",
    "nav.skip": "Zum Inhalt springen",
    "nav.other_language": "English",
    "nav.other_language_label": "Switch to English",
    "footer.privacy": "Datenschutz",
    "footer.staff": "Für Mitarbeitende",
    "footer.home": "Startseite",
    "noscript": "Diese Seite braucht JavaScript, um Ihren Platz in der Warteschlange live anzuzeigen. "
                "Bitte schalten Sie JavaScript ein.",
    # index
    "index.title": "Online anstellen",
    "index.intro": "Wählen Sie das Amt, mit dem Sie sprechen möchten. Sie warten online und sehen "
                   "jederzeit, wann Sie an der Reihe sind. Sie müssen sich nicht registrieren.",
    "index.departments": "Ämter",
    "index.none": "Zurzeit bietet kein Amt ein Online-Wartezimmer an.",
    "dept.open": "Geöffnet",
    "dept.closed": "Geschlossen",
    "dept.waiting.zero": "Niemand wartet",
    "dept.waiting.one": "1 Person wartet",
    "dept.waiting.other": "{n} Personen warten",
    "dept.estimate": "Geschätzte Wartezeit: {range}",
    "dept.no_clerk": "Gerade ist niemand im Dienst",
    "dept.queue_full": "Die Warteschlange ist gerade voll. Bitte versuchen Sie es später noch einmal.",
    "dept.join": "Anstellen",
    "dept.join_label": "Bei {department} anstellen",
    "dept.hours": "Öffnungszeiten",
    "dept.always_open": "Jederzeit geöffnet",
    "day.mon": "Montag",
    "day.tue": "Dienstag",
    "day.wed": "Mittwoch",
    "day.thu": "Donnerstag",
    "day.fri": "Freitag",
    "day.sat": "Samstag",
    "day.sun": "Sonntag",
    "range.same": "etwa {n} Minuten",
    "range.span": "{low} bis {high} Minuten",
    "range.soon": "weniger als eine Minute",
    "range.upto": "bis zu {n} Minuten",
    # join
    "join.title": "Anstellen: {department}",
    "join.intro": "Bitte machen Sie ein paar kurze Angaben. Nur die Zustimmung zum Datenschutzhinweis "
                  "ist immer nötig.",
    "join.optional": "freiwillig",
    "join.required": "Pflichtfeld",
    "join.name": "Name oder Pseudonym",
    "join.name_hint": "So werden Sie angesprochen. Ein Vorname oder ein ausgedachter Name genügt.",
    "join.concern": "Ihr Anliegen in Stichworten",
    "join.concern_hint": "Zum Beispiel „Reisepass verlängern“. Höchstens 500 Zeichen.",
    "join.language": "In welcher Sprache möchten Sie sprechen?",
    "join.language_hint": "Damit sich die Mitarbeitenden vorbereiten können.",
    "join.needs": "Unterstützung",
    "join.interpreter": "Ich brauche eine Dolmetschung in Gebärdensprache",
    "join.consent": "Ich habe den Datenschutzhinweis gelesen und bin einverstanden.",
    "join.consent_link": "Datenschutzhinweis lesen (öffnet ein neues Fenster)",
    "join.submit": "Jetzt anstellen",
    "join.sending": "Einen Moment …",
    "join.closed": "{department} ist gerade geschlossen.",
    "join.back": "Zurück zur Übersicht",
    # wait
    "wait.title": "Ihr Platz in der Warteschlange",
    "wait.department": "Amt",
    "wait.number": "Ihre Wartenummer",
    "wait.position": "Ihre Position",
    "wait.estimate": "Geschätzte Wartezeit",
    "wait.keep_open": "Lassen Sie diese Seite geöffnet. Wenn die Verbindung kurz abreißt, bleibt Ihr Platz "
                      "{minutes} Minuten lang erhalten.",
    "wait.notify": "Ton und Benachrichtigung einschalten",
    "wait.notify_hint": "Dann hören Sie einen Ton und sehen eine Meldung, sobald Sie aufgerufen werden – "
                        "auch wenn Sie in einem anderen Fenster sind.",
    "wait.leave": "Warteschlange verlassen",
    "wait.leave_question": "Möchten Sie die Warteschlange wirklich verlassen?",
    "wait.leave_explain": "Ihr Platz geht dabei verloren.",
    "wait.leave_yes": "Ja, verlassen",
    "wait.leave_no": "Nein, weiter warten",
    "wait.join_now": "Jetzt eintreten",
    "wait.home": "Zur Übersicht",
    # privacy
    "privacy.title": "Datenschutzhinweis",
    "privacy.intro": "Hier steht in einfachen Worten, welche Daten das Online-Wartezimmer speichert, "
                     "wer sie sieht und wann sie gelöscht werden.",
    "privacy.what_h": "Was wir speichern",
    "privacy.what": "Wenn Sie sich anstellen, speichern wir nur:",
    "privacy.what_name": "den Namen oder das Pseudonym, mit dem Sie angesprochen werden möchten (freiwillig),",
    "privacy.what_concern": "Ihr Anliegen in Stichworten (freiwillig),",
    "privacy.what_language": "die Sprache, in der Sie sprechen möchten,",
    "privacy.what_needs": "ob Sie eine Dolmetschung in Gebärdensprache brauchen,",
    "privacy.what_times": "wann Sie angekommen sind und wann Sie aufgerufen wurden,",
    "privacy.what_note": "eine kurze Notiz, wenn Mitarbeitende Sie an ein anderes Amt weiterleiten.",
    "privacy.no_account": "Sie brauchen kein Konto. Ihr Browser bekommt einen zufälligen Schlüssel, der Ihren "
                          "Platz sichert. Er bleibt in Ihrem Browser gespeichert; auf dem Server liegt nur "
                          "eine nicht umkehrbare Prüfsumme davon.",
    "privacy.how_long_h": "Wie lange",
    "privacy.how_long": "Ihre Angaben werden spätestens 24 Stunden nach dem Ende Ihres Besuchs gelöscht. "
                        "Für Statistiken (zum Beispiel durchschnittliche Wartezeiten) zählen wir nur Zeiten, "
                        "ohne Namen oder Anliegen.",
    "privacy.recording_h": "Keine Aufzeichnung",
    "privacy.recording": "Im Wartezimmer wird nichts aufgezeichnet, weder Bild noch Ton.",
    "privacy.who_h": "Wer Ihre Angaben sieht",
    "privacy.who": "Nur die Mitarbeitenden des Amtes, bei dem Sie warten. Wenn Sie an ein anderes Amt "
                   "weitergeleitet werden, sehen auch dessen Mitarbeitende Ihre Angaben. Andere Wartende sehen nichts "
                   "von Ihnen.",
    "privacy.rights_h": "Ihre Rechte",
    "privacy.rights": "Sie können die Warteschlange jederzeit verlassen. Für Auskunft, Berichtigung oder "
                      "Löschung wenden Sie sich an die oder den Datenschutzbeauftragten Ihrer Verwaltung.",
    # staff
    "staff.title": "Für Mitarbeitende",
    "staff.login": "Anmelden",
    "staff.username": "Benutzername",
    "staff.password": "Passwort",
    "staff.login_submit": "Anmelden",
    "staff.logout": "Abmelden",
    "staff.dashboard": "Warteschlangen",
    "staff.presence": "Mein Status",
    "staff.sound": "Ton und Benachrichtigungen einschalten",
    "staff.transfer_title": "Weiterleiten",
    "staff.transfer_to": "An welches Amt?",
    "staff.transfer_note": "Notiz für die Kolleginnen und Kollegen (freiwillig)",
    "staff.transfer_submit": "Weiterleiten",
    "staff.cancel": "Abbrechen",
    # not found
    "notfound.title": "Seite nicht gefunden",
    "notfound.text": "Diese Seite gibt es nicht (mehr). Vielleicht hilft Ihnen die Übersicht weiter.",
    # scripts
    "js.waiting.zero": "Niemand wartet",
    "js.waiting.one": "1 Person wartet",
    "js.waiting.other": "{n} Personen warten",
    "js.estimate": "Geschätzte Wartezeit: {range}",
    "js.range.same": "etwa {n} Minuten",
    "js.range.span": "{low} bis {high} Minuten",
    "js.range.soon": "weniger als eine Minute",
    "js.range.upto": "bis zu {n} Minuten",
    "js.no_clerk": "Gerade ist niemand im Dienst",
    "js.open": "Geöffnet",
    "js.closed": "Geschlossen",
    "js.queue_full": "Die Warteschlange ist gerade voll.",
    "js.already": "Sie warten bereits bei {department}.",
    "js.already_link": "Zurück zu Ihrem Platz",
    "js.chars_left": "Noch {n} Zeichen",
    "js.sending": "Einen Moment …",
    "js.position": "Sie sind an Position {n}.",
    "js.position_next": "Sie sind an Position 1 – als Nächstes an der Reihe.",
    "js.position_unknown": "Ihre Position wird ermittelt …",
    "js.clerks.one": "1 Mitarbeiterin oder Mitarbeiter im Dienst",
    "js.clerks.other": "{n} Mitarbeitende im Dienst",
    "js.no_clerk_wait": "Gerade ist niemand im Dienst. Sie behalten Ihren Platz.",
    "js.closed_now": "Das Amt hat gerade geschlossen. Sie behalten Ihren Platz.",
    "js.connecting": "Verbindung wird hergestellt …",
    "js.connected": "Verbunden",
    "js.reconnecting": "Verbindung unterbrochen – wird wiederhergestellt. Ihr Platz bleibt erhalten.",
    "js.called_title": "Sie sind an der Reihe!",
    "js.called_by": "{clerk} ruft Sie auf.",
    "js.called_by_anonymous": "Sie werden aufgerufen.",
    "js.document_called": "Sie sind dran! – Sprechstunde",
    "js.in_consultation": "Ihr Gespräch mit {clerk} hat begonnen.",
    "js.in_consultation_anonymous": "Ihr Gespräch hat begonnen.",
    "js.returned": "Sie sind wieder in der Warteschlange – an Ihrem ursprünglichen Platz.",
    "js.transferred": "Sie wurden an {department} weitergeleitet. Ihre ursprüngliche Ankunftszeit zählt.",
    "js.done": "Ihr Termin ist beendet. Vielen Dank für Ihren Besuch!",
    "js.left": "Sie haben die Warteschlange verlassen.",
    "js.no_show": "Sie wurden aufgerufen, haben aber nicht reagiert. Ihr Platz ist verfallen. "
                  "Sie können sich gern erneut anstellen.",
    "js.expired": "Ihr Platz ist verfallen, weil die Seite zu lange geschlossen war. "
                  "Sie können sich gern erneut anstellen.",
    "js.unknown_ticket": "Diese Wartenummer ist unbekannt oder abgelaufen.",
    "js.notify_on": "Eingeschaltet: Sie hören einen Ton, sobald Sie aufgerufen werden.",
    "js.notify_denied": "Benachrichtigungen sind im Browser blockiert. Lassen Sie diese Seite offen – "
                        "Sie hören trotzdem einen Ton.",
    "js.notification_called": "{clerk} ruft Sie auf. Bitte kehren Sie zur Sprechstunde zurück.",
    "js.err.invalid_input": "Bitte prüfen Sie Ihre Angaben.",
    "js.err.payload_too_large": "Die Angaben sind zu lang.",
    "js.err.unauthenticated": "Benutzername oder Passwort ist falsch, oder die Anmeldung ist abgelaufen.",
    "js.err.csrf": "Die Sitzung ist abgelaufen. Bitte laden Sie die Seite neu.",
    "js.err.forbidden": "Das dürfen Sie nicht.",
    "js.err.unknown_department": "Dieses Amt gibt es nicht.",
    "js.err.ticket_not_found": "Diese Wartenummer ist unbekannt oder abgelaufen.",
    "js.err.department_closed": "Das Amt ist gerade geschlossen.",
    "js.err.queue_full": "Die Warteschlange ist gerade voll. Bitte versuchen Sie es später noch einmal.",
    "js.err.queue_empty": "Niemand wartet.",
    "js.err.illegal_transition": "Das geht in diesem Zustand nicht mehr (vielleicht war jemand schneller).",
    "js.err.not_your_ticket": "Eine Kollegin oder ein Kollege kümmert sich bereits darum.",
    "js.err.already_queued": "Sie warten bereits in einer Warteschlange.",
    "js.err.rate_limited": "Zu viele Versuche. Bitte warten Sie einige Minuten.",
    "js.err.conflict": "Gerade ist viel los. Bitte versuchen Sie es noch einmal.",
    "js.err.network": "Keine Verbindung zum Server. Bitte prüfen Sie Ihre Internetverbindung.",
    "js.err.generic": "Etwas ist schiefgegangen. Bitte versuchen Sie es noch einmal.",
    "js.err.consent": "Bitte stimmen Sie dem Datenschutzhinweis zu.",
    "js.err.name_required": "Bitte geben Sie einen Namen oder ein Pseudonym an.",
    "js.err.concern_required": "Bitte beschreiben Sie kurz Ihr Anliegen.",
    "js.presence.available": "Erreichbar",
    "js.presence.busy": "Im Gespräch",
    "js.presence.away": "Abwesend",
    "js.presence.offline": "Abgemeldet",
    "js.set_available": "Auf „Erreichbar“ stellen",
    "js.set_away": "Auf „Abwesend“ stellen",
    "js.queue": "Warteschlange",
    "js.active": "Aufgerufen und im Gespräch",
    "js.colleagues": "Im Dienst",
    "js.queue_empty": "Niemand wartet.",
    "js.no_active": "Niemand ist aufgerufen.",
    "js.no_colleagues": "Niemand ist angemeldet.",
    "js.anonymous": "—",
    "js.no_concern": "ohne Angabe",
    "js.interpreter": "Gebärdensprache",
    "js.waited": "wartet seit {t}",
    "js.minutes_short": "{n} Min.",
    "js.hours_short": "{h} Std. {m} Min.",
    "js.under_minute": "unter 1 Min.",
    "js.transferred_from": "Weitergeleitet von {department}",
    "js.called_state": "Aufgerufen von {clerk}",
    "js.consultation_state": "Im Gespräch mit {clerk}",
    "js.called_by_me": "Von Ihnen aufgerufen",
    "js.consultation_mine": "Ihr Gespräch läuft",
    "js.disconnected": "Verbindung unterbrochen",
    "js.you": "Sie",
    "js.call_next": "Nächste Person aufrufen",
    "js.call": "Aufrufen",
    "js.start": "Gespräch beginnen",
    "js.finish": "Abschließen",
    "js.no_show_action": "Nicht erschienen",
    "js.return": "Zurück in die Warteschlange",
    "js.transfer": "Weiterleiten",
    "js.ticket_number": "Nr. {n}",
    "js.done_called": "{name} aufgerufen.",
    "js.done_action": "Erledigt.",
    "js.new_arrival": "Neu in der Warteschlange von {department}",
    "js.staff_connecting": "Verbindung wird hergestellt …",
    "js.staff_reconnecting": "Verbindung unterbrochen – wird wiederhergestellt …",
    "js.sound_on": "Ton und Benachrichtigungen sind eingeschaltet.",
}

EN: dict[str, str] = {
    "site.name": "Sprechstunde",
    "site.tagline": "Your administration's online waiting room",
    "nav.skip": "Skip to content",
    "nav.other_language": "Deutsch",
    "nav.other_language_label": "Auf Deutsch wechseln",
    "footer.privacy": "Privacy",
    "footer.staff": "For staff",
    "footer.home": "Home",
    "noscript": "This page needs JavaScript to show your place in the queue live. Please turn JavaScript on.",
    "index.title": "Join a queue online",
    "index.intro": "Choose the office you would like to speak to. You wait online and can always see when "
                   "it is your turn. No registration needed.",
    "index.departments": "Offices",
    "index.none": "No office offers an online waiting room at the moment.",
    "dept.open": "Open",
    "dept.closed": "Closed",
    "dept.waiting.zero": "Nobody is waiting",
    "dept.waiting.one": "1 person waiting",
    "dept.waiting.other": "{n} people waiting",
    "dept.estimate": "Estimated wait: {range}",
    "dept.no_clerk": "No clerk available right now",
    "dept.queue_full": "The queue is full right now. Please try again later.",
    "dept.join": "Join the queue",
    "dept.join_label": "Join the queue of {department}",
    "dept.hours": "Opening hours",
    "dept.always_open": "Always open",
    "day.mon": "Monday",
    "day.tue": "Tuesday",
    "day.wed": "Wednesday",
    "day.thu": "Thursday",
    "day.fri": "Friday",
    "day.sat": "Saturday",
    "day.sun": "Sunday",
    "range.same": "about {n} minutes",
    "range.span": "{low} to {high} minutes",
    "range.soon": "less than a minute",
    "range.upto": "up to {n} minutes",
    "join.title": "Check in: {department}",
    "join.intro": "Please give a few short details. Only accepting the privacy notice is always required.",
    "join.optional": "optional",
    "join.required": "required",
    "join.name": "Name or pseudonym",
    "join.name_hint": "This is how we will address you. A first name or a made-up name is fine.",
    "join.concern": "Your concern in a few words",
    "join.concern_hint": "For example “renew my passport”. At most 500 characters.",
    "join.language": "Which language would you like to speak?",
    "join.language_hint": "So that the staff can prepare.",
    "join.needs": "Support",
    "join.interpreter": "I need a sign-language interpreter",
    "join.consent": "I have read the privacy notice and agree.",
    "join.consent_link": "Read the privacy notice (opens a new window)",
    "join.submit": "Join the queue now",
    "join.sending": "One moment …",
    "join.closed": "{department} is closed right now.",
    "join.back": "Back to the overview",
    "wait.title": "Your place in the queue",
    "wait.department": "Office",
    "wait.number": "Your number",
    "wait.position": "Your position",
    "wait.estimate": "Estimated wait",
    "wait.keep_open": "Please keep this page open. If the connection drops for a moment, your place is kept "
                      "for {minutes} minutes.",
    "wait.notify": "Turn on sound and notification",
    "wait.notify_hint": "You will hear a sound and see a message as soon as you are called, even while you "
                        "are in another window.",
    "wait.leave": "Leave the queue",
    "wait.leave_question": "Do you really want to leave the queue?",
    "wait.leave_explain": "You will lose your place.",
    "wait.leave_yes": "Yes, leave",
    "wait.leave_no": "No, keep waiting",
    "wait.join_now": "Join now",
    "wait.home": "Back to the overview",
    "privacy.title": "Privacy notice",
    "privacy.intro": "In plain words: what the online waiting room stores, who sees it and when it is deleted.",
    "privacy.what_h": "What we store",
    "privacy.what": "When you join a queue we store only:",
    "privacy.what_name": "the name or pseudonym you want to be addressed by (optional),",
    "privacy.what_concern": "your concern in a few words (optional),",
    "privacy.what_language": "the language you would like to speak,",
    "privacy.what_needs": "whether you need a sign-language interpreter,",
    "privacy.what_times": "when you arrived and when you were called,",
    "privacy.what_note": "a short note when staff transfer you to another office.",
    "privacy.no_account": "You need no account. Your browser receives a random key that secures your place. "
                          "It stays in your browser; the server keeps only an irreversible checksum of it.",
    "privacy.how_long_h": "How long",
    "privacy.how_long": "Your details are deleted at most 24 hours after your visit ends. For statistics "
                        "(such as average waiting times) we count only times, without names or concerns.",
    "privacy.recording_h": "No recording",
    "privacy.recording": "Nothing is recorded in the waiting room, neither picture nor sound.",
    "privacy.who_h": "Who sees your details",
    "privacy.who": "Only the staff of the office you are waiting for. If you are transferred to another "
                   "office, its staff see them too. Other people waiting see nothing about you.",
    "privacy.rights_h": "Your rights",
    "privacy.rights": "You can leave the queue at any time. For access, correction or deletion, contact the "
                      "data protection officer of your administration.",
    "staff.title": "For staff",
    "staff.login": "Log in",
    "staff.username": "Username",
    "staff.password": "Password",
    "staff.login_submit": "Log in",
    "staff.logout": "Log out",
    "staff.dashboard": "Queues",
    "staff.presence": "My status",
    "staff.sound": "Turn on sound and notifications",
    "staff.transfer_title": "Transfer",
    "staff.transfer_to": "To which office?",
    "staff.transfer_note": "Note for your colleagues (optional)",
    "staff.transfer_submit": "Transfer",
    "staff.cancel": "Cancel",
    "notfound.title": "Page not found",
    "notfound.text": "This page does not exist (any more). The overview may help.",
    "js.waiting.zero": "Nobody is waiting",
    "js.waiting.one": "1 person waiting",
    "js.waiting.other": "{n} people waiting",
    "js.estimate": "Estimated wait: {range}",
    "js.range.same": "about {n} minutes",
    "js.range.span": "{low} to {high} minutes",
    "js.range.soon": "less than a minute",
    "js.range.upto": "up to {n} minutes",
    "js.no_clerk": "No clerk available right now",
    "js.open": "Open",
    "js.closed": "Closed",
    "js.queue_full": "The queue is full right now.",
    "js.already": "You are already waiting in {department}.",
    "js.already_link": "Back to your place",
    "js.chars_left": "{n} characters left",
    "js.sending": "One moment …",
    "js.position": "You are number {n} in the queue.",
    "js.position_next": "You are number 1 in the queue: you are next.",
    "js.position_unknown": "Finding your position …",
    "js.clerks.one": "1 clerk on duty",
    "js.clerks.other": "{n} clerks on duty",
    "js.no_clerk_wait": "No clerk available right now. You keep your place.",
    "js.closed_now": "The office has just closed. You keep your place.",
    "js.connecting": "Connecting …",
    "js.connected": "Connected",
    "js.reconnecting": "Connection lost – reconnecting. Your place is kept.",
    "js.called_title": "It is your turn!",
    "js.called_by": "{clerk} is calling you.",
    "js.called_by_anonymous": "You are being called.",
    "js.document_called": "Your turn! – Sprechstunde",
    "js.in_consultation": "Your consultation with {clerk} has started.",
    "js.in_consultation_anonymous": "Your consultation has started.",
    "js.returned": "You are back in the queue, at your original place.",
    "js.transferred": "You have been transferred to {department}. Your original arrival time counts.",
    "js.done": "Your visit is finished. Thank you!",
    "js.left": "You have left the queue.",
    "js.no_show": "You were called but did not respond, so your place has lapsed. You are welcome to join "
                  "again.",
    "js.expired": "Your place has lapsed because the page was closed for too long. You are welcome to join "
                  "again.",
    "js.unknown_ticket": "This ticket is unknown or has expired.",
    "js.notify_on": "On: you will hear a sound as soon as you are called.",
    "js.notify_denied": "Notifications are blocked in your browser. Keep this page open – you will still "
                        "hear a sound.",
    "js.notification_called": "{clerk} is calling you. Please return to Sprechstunde.",
    "js.err.invalid_input": "Please check your details.",
    "js.err.payload_too_large": "The details are too long.",
    "js.err.unauthenticated": "Wrong username or password, or your session has expired.",
    "js.err.csrf": "Your session has expired. Please reload the page.",
    "js.err.forbidden": "You may not do this.",
    "js.err.unknown_department": "This office does not exist.",
    "js.err.ticket_not_found": "This ticket is unknown or has expired.",
    "js.err.department_closed": "The office is closed right now.",
    "js.err.queue_full": "The queue is full right now. Please try again later.",
    "js.err.queue_empty": "Nobody is waiting.",
    "js.err.illegal_transition": "That is no longer possible in this state (perhaps someone was quicker).",
    "js.err.not_your_ticket": "A colleague is already taking care of this.",
    "js.err.already_queued": "You are already waiting in a queue.",
    "js.err.rate_limited": "Too many attempts. Please wait a few minutes.",
    "js.err.conflict": "It is busy right now. Please try again.",
    "js.err.network": "No connection to the server. Please check your internet connection.",
    "js.err.generic": "Something went wrong. Please try again.",
    "js.err.consent": "Please accept the privacy notice.",
    "js.err.name_required": "Please give a name or pseudonym.",
    "js.err.concern_required": "Please describe your concern briefly.",
    "js.presence.available": "Available",
    "js.presence.busy": "In a consultation",
    "js.presence.away": "Away",
    "js.presence.offline": "Logged out",
    "js.set_available": "Set to “available”",
    "js.set_away": "Set to “away”",
    "js.queue": "Queue",
    "js.active": "Called and in consultation",
    "js.colleagues": "On duty",
    "js.queue_empty": "Nobody is waiting.",
    "js.no_active": "Nobody has been called.",
    "js.no_colleagues": "Nobody is logged in.",
    "js.anonymous": "—",
    "js.no_concern": "not given",
    "js.interpreter": "Sign language",
    "js.waited": "waiting for {t}",
    "js.minutes_short": "{n} min",
    "js.hours_short": "{h} h {m} min",
    "js.under_minute": "under 1 min",
    "js.transferred_from": "Transferred from {department}",
    "js.called_state": "Called by {clerk}",
    "js.consultation_state": "In consultation with {clerk}",
    "js.called_by_me": "Called by you",
    "js.consultation_mine": "Your consultation is under way",
    "js.disconnected": "Connection lost",
    "js.you": "you",
    "js.call_next": "Call next person",
    "js.call": "Call",
    "js.start": "Start consultation",
    "js.finish": "Finish",
    "js.no_show_action": "No-show",
    "js.return": "Return to queue",
    "js.transfer": "Transfer",
    "js.ticket_number": "No. {n}",
    "js.done_called": "Called {name}.",
    "js.done_action": "Done.",
    "js.new_arrival": "New in the queue of {department}",
    "js.staff_connecting": "Connecting …",
    "js.staff_reconnecting": "Connection lost – reconnecting …",
    "js.sound_on": "Sound and notifications are on.",
}

CATALOGS: dict[str, dict[str, str]] = {"de": DE, "en": EN}


def negotiate(requested: str | None) -> str | None:
    """The page language for a requested code, or None when it is not one we have."""
    if not requested:
        return None
    code = requested.strip().lower()[:2]
    return code if code in CATALOGS else None


def gettext(lang: str) -> Translate:
    """A translate function ``_(message_id, n=None, **placeholders)`` for one language.

    With ``n``, the plural id ``<message_id>.zero`` (if present), ``.one`` or ``.other`` is chosen and
    ``n`` is available as a placeholder. A missing message falls back to German, then to the id.
    """
    catalog = CATALOGS.get(lang, CATALOGS[DEFAULT_LANGUAGE])
    fallback = CATALOGS[DEFAULT_LANGUAGE]

    def translate(message_id: str, n: int | None = None, **placeholders: Any) -> str:
        if n is not None:
            placeholders["n"] = n
            candidates = ([f"{message_id}.zero"] if n == 0 else []) + [
                f"{message_id}.one" if n == 1 else f"{message_id}.other"
            ]
            message_id = next((c for c in candidates if c in catalog or c in fallback), candidates[-1])
        text = catalog.get(message_id) or fallback.get(message_id) or message_id
        return text.format(**placeholders) if placeholders else text

    return translate


def script_messages(lang: str) -> dict[str, str]:
    """The messages the browser scripts need, without their ``js.`` prefix."""
    catalog = {**CATALOGS[DEFAULT_LANGUAGE], **CATALOGS.get(lang, {})}
    return {k[3:]: v for k, v in catalog.items() if k.startswith("js.")}


def estimate_text(translate: Translate, estimate: list[int] | tuple[int, int] | None) -> str | None:
    """An estimated-wait range in words, or None when there is no estimate (no clerk)."""
    if not estimate:
        return None
    low, high = estimate
    if high <= 1:
        return translate("range.soon")
    if low == high:
        return translate("range.same", n=low)
    if low == 0:
        return translate("range.upto", n=high)
    return translate("range.span", low=low, high=high)
