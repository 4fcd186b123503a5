// /admin/stats: figures per department and hour, day or week. Every chart (uPlot, served locally) has a
// table with the same figures beside it; the charts themselves are hidden from screen readers.
import { errorMessage, h, pageData, request, t } from './common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
const lang = document.documentElement.lang || 'de';
const number = new Intl.NumberFormat(lang, { maximumFractionDigits: 1 });
const COLORS = ['#0b4f8a', '#1b6e37', '#a3261c', '#7a4a00', '#6b3fa0', '#00707a', '#4a5260'];
const minutes = (seconds) => (seconds === null || seconds === undefined ? null : seconds / 60);

/** The charts: a title, the unit of the values, and the series (a figure of each period). */
function chartList(result) {
  const languages = Object.keys(result.totals.languages).slice(0, 5);
  return [
    { id: 'flow', unit: 'count', series: ['arrivals', 'served', 'abandoned', 'no_shows', 'closed_out'] },
    { id: 'wait', unit: 'minutes', series: ['wait_median_s', 'wait_p90_s'] },
    { id: 'consultation', unit: 'minutes', series: ['consultation_median_s', 'consultation_p90_s'] },
    { id: 'transfers', unit: 'count', series: ['transfers_in', 'transfers_out', 'returned', 'rejoined'] },
    { id: 'clerks', unit: 'count', series: ['clerks_on_duty'] },
    {
      id: 'demand',
      unit: 'count',
      series: ['interpreter', ...languages.map((code) => `lang:${code}`)],
    },
  ];
}

function seriesName(key) {
  if (key.startsWith('lang:')) return t('stats.language', { code: key.slice(5).toUpperCase() });
  return t(`stats.figure.${key}`);
}

function value(period, key, unit) {
  const raw = key.startsWith('lang:') ? period.languages[key.slice(5)] ?? 0 : period[key];
  return unit === 'minutes' ? minutes(raw) : raw;
}

function formatted(v) {
  return v === null || v === undefined ? '–' : number.format(v);
}

function xValue(period, granularity) {
  const [date, time] = period.start.split('T');
  const [y, m, d] = date.split('-').map(Number);
  const hour = granularity === 'hour' && time ? Number(time.slice(0, 2)) : 0;
  return Date.UTC(y, m - 1, d, hour) / 1000;
}

let plots = [];

function destroyPlots() {
  for (const plot of plots) plot.destroy();
  plots = [];
}

function chartWidth(element) {
  return Math.max(280, Math.floor(element.getBoundingClientRect().width));
}

function table(chart, result, captionId) {
  const head = h('tr', {}, h('th', { scope: 'col' }, t('stats.period')), chart.series.map((key) => h('th', { scope: 'col' }, seriesName(key))));
  const rows = result.periods.map((period) =>
    h('tr', {}, h('th', { scope: 'row' }, period.period), chart.series.map((key) => h('td', {}, formatted(value(period, key, chart.unit))))),
  );
  const caption = h('caption', { id: captionId }, t(`stats.chart.${chart.id}`), ' ', h('span', { class: 'muted' }, `(${t(`stats.unit.${chart.unit}`)})`));
  return h(
    'div',
    { class: 'admin-stats__table', role: 'region', tabindex: '0', 'aria-labelledby': captionId },
    h('table', { class: 'table' }, caption, h('thead', {}, head), h('tbody', {}, rows)),
  );
}

function plot(chart, result, element) {
  const xs = result.periods.map((period) => xValue(period, result.granularity));
  const columns = chart.series.map((key) => result.periods.map((period) => value(period, key, chart.unit)));
  const options = {
    width: chartWidth(element),
    height: 240,
    tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
    scales: { x: { time: true } },
    axes: [{}, { label: t(`stats.unit.${chart.unit}`) }],
    series: [
      { label: t('stats.period') },
      ...chart.series.map((key, i) => ({
        label: seriesName(key),
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: false,
        points: { show: result.periods.length <= 60 },
      })),
    ],
    legend: { live: false },
    cursor: { show: false },
  };
  plots.push(new window.uPlot(options, [xs, ...columns], element));
}

function renderCharts(result) {
  destroyPlots();
  const container = $('stats-charts');
  container.replaceChildren();
  for (const chart of chartList(result)) {
    const headingId = `stats-chart-${chart.id}-heading`;
    const plotElement = h('div', { class: 'admin-stats__plot', 'aria-hidden': 'true', dataset: { chart: chart.id } });
    const section = h(
      'section',
      { class: 'admin-stats__chart panel', 'aria-labelledby': headingId },
      h('h2', { id: headingId }, t(`stats.chart.${chart.id}`)),
      h('div', { class: 'admin-stats__pair' }, plotElement, table(chart, result, `stats-table-${chart.id}`)),
    );
    container.append(section);
    plot(chart, result, plotElement);
  }
}

function renderTotals(result) {
  const list = $('stats-totals-list');
  const totals = result.totals;
  const items = [
    ['arrivals', totals.arrivals], ['served', totals.served], ['abandoned', totals.abandoned],
    ['no_shows', totals.no_shows], ['transfers_in', totals.transfers_in], ['transfers_out', totals.transfers_out],
    ['wait_median_s', minutes(totals.wait_median_s), 'minutes'], ['wait_p90_s', minutes(totals.wait_p90_s), 'minutes'],
    ['consultation_median_s', minutes(totals.consultation_median_s), 'minutes'],
    ['clerks_on_duty', totals.clerks_on_duty], ['interpreter', totals.interpreter],
  ];
  list.replaceChildren(
    ...items.map(([key, v, unit]) =>
      h('div', {}, h('dt', {}, seriesName(key)), h('dd', {}, unit ? `${formatted(v)} ${t('stats.unit.minutes_short')}` : formatted(v))),
    ),
    h(
      'div',
      {},
      h('dt', {}, t('stats.languages')),
      h('dd', {}, Object.entries(totals.languages).map(([code, n]) => `${code.toUpperCase()} ${number.format(n)}`).join(', ') || '–'),
    ),
  );
  $('stats-totals').hidden = false;
}

function params() {
  const form = $('stats-form');
  const query = new URLSearchParams();
  for (const name of ['department', 'granularity', 'from', 'to']) query.set(name, form.elements[name].value);
  return query;
}

function showError(text) {
  const box = $('stats-error');
  box.textContent = text;
  box.hidden = false;
  box.focus();
}

async function load() {
  const query = params();
  $('stats-error').hidden = true;
  $('stats-csv').href = `/api/admin/stats.csv?${query}`;
  history.replaceState(null, '', `?${query}`);
  $('stats-status').textContent = t('stats.loading');
  let body;
  try {
    ({ body } = await request('GET', `/api/admin/stats?${query}`));
  } catch (error) {
    $('stats-status').textContent = '';
    showError(errorMessage(error));
    return;
  }
  renderTotals(body);
  renderCharts(body);
  const name = body.department === data.all ? t('stats.all_departments') : body.department_names[body.department] ?? body.department;
  $('stats-status').textContent = t('stats.shown', { department: name, from: body.from, to: body.to });
}

function restore() {
  const form = $('stats-form');
  const query = new URLSearchParams(location.search);
  for (const name of ['department', 'granularity', 'from', 'to']) {
    const field = form.elements[name];
    const v = query.get(name);
    if (!v) continue;
    if (field.tagName === 'SELECT' && ![...field.options].some((option) => option.value === v)) continue;
    field.value = v;
  }
}

function init() {
  if (!window.uPlot) {
    showError(t('stats.no_charts'));
    return;
  }
  restore();
  $('stats-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    if (!form.elements.from.value || !form.elements.to.value) {
      showError(t('stats.dates_missing'));
      return;
    }
    load();
  });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const p of plots) p.setSize({ width: chartWidth(p.root.parentElement), height: 240 });
    }, 150);
  });
  load();
}

init();
