/* Overview: totals, charts over time, per model and per key, backend health. */
(function () {
  'use strict';
  const { api, el, fill, fmt, emptyRow, badge } = DM;
  let range = '24h';
  let timer = null;

  function share(value, max) {
    return el('div', { class: 'bar' }, el('span', { style: { width: (max ? Math.max(2, (value / max) * 100) : 0) + '%' } }));
  }

  async function load() {
    const params = new URLSearchParams({ range });
    const model = document.getElementById('filter-model').value;
    const key = document.getElementById('filter-key').value;
    if (model) params.set('model', model);
    if (key) params.set('key', key);
    let data;
    try {
      data = await api('GET', '/overview?' + params.toString());
    } catch (e) {
      DM.toast(e.message, 'error');
      return;
    }
    const t = data.totals;
    const tokens = t.prompt_tokens + t.completion_tokens;
    document.getElementById('stat-requests').textContent = fmt.compact(t.requests);
    document.getElementById('stat-requests-hint').textContent = 'in the last ' + range;
    document.getElementById('stat-tokens').textContent = fmt.compact(tokens);
    document.getElementById('stat-tokens-hint').textContent = fmt.compact(t.prompt_tokens) + ' in · ' + fmt.compact(t.completion_tokens) + ' out';
    document.getElementById('stat-errors').textContent = fmt.compact(t.errors);
    document.getElementById('stat-errors-hint').textContent = fmt.pct(t.errors, t.requests) + ' of requests';
    document.getElementById('stat-latency').textContent = fmt.ms(t.avg_latency_ms);
    document.getElementById('stat-latency-hint').textContent = 'mean, request to last byte';

    const labels = data.series.map((p) => p.t);
    DMChart.draw(document.getElementById('chart-requests'), {
      label: 'requests over time', labels, kind: 'line', integer: true,
      series: [
        { name: 'requests', values: data.series.map((p) => p.requests), area: true },
        { name: 'errors', values: data.series.map((p) => p.errors), color: 3 },
      ],
    });
    DMChart.draw(document.getElementById('chart-tokens'), {
      label: 'tokens over time', labels, kind: 'bars', integer: true,
      series: [
        { name: 'prompt', values: data.series.map((p) => p.prompt_tokens) },
        { name: 'completion', values: data.series.map((p) => p.completion_tokens) },
      ],
    });
    DMChart.draw(document.getElementById('chart-latency'), {
      label: 'latency over time', labels, kind: 'line', format: fmt.ms, empty: 'No requests in this period',
      series: [
        { name: 'mean', values: data.series.map((p) => p.avg_latency_ms), area: true, color: 2 },
        { name: 'max', values: data.series.map((p) => p.max_latency_ms), color: 3 },
      ],
    });

    const backends = data.backends.map((b) => el('tr', {},
      el('td', {}, el('b', { text: b.name }), ' ', el('span', { class: 'muted', text: b.type })),
      el('td', {}, b.reachable ? badge('reachable', 'ok') : badge('unreachable', 'err')),
      el('td', { class: 'num', text: fmt.int(b.model_count) }),
      el('td', { class: 'muted ellipsis', title: b.last_error || '', text: b.last_error || '—' })));
    fill(document.getElementById('backends'), backends.length ? backends : emptyRow(4, 'No backends'));

    const maxModel = Math.max(0, ...data.by_model.map((r) => r.requests));
    const models = data.by_model.map((r) => el('tr', {},
      el('td', { class: 'bar-cell' }, el('span', { class: 'break', text: r.requested_model }), share(r.requests, maxModel)),
      el('td', { class: 'num', text: fmt.int(r.requests) }),
      el('td', { class: 'num', text: fmt.compact(r.total_tokens) }),
      el('td', { class: 'num' + (r.errors ? ' status-err' : ''), text: fmt.int(r.errors) }),
      el('td', { class: 'num hide-sm', text: fmt.ms(r.avg_latency_ms) })));
    fill(document.getElementById('by-model'), models.length ? models : emptyRow(5, 'No requests in this period'));

    const maxKey = Math.max(0, ...data.by_key.map((r) => r.requests));
    const keys = data.by_key.map((r) => el('tr', {},
      el('td', { class: 'bar-cell' }, el('span', { class: 'break', text: r.key_name || (r.key_id ? r.key_id : 'no key') }), share(r.requests, maxKey)),
      el('td', { class: 'num', text: fmt.int(r.requests) }),
      el('td', { class: 'num', text: fmt.compact(r.total_tokens) }),
      el('td', { class: 'num' + (r.errors ? ' status-err' : ''), text: fmt.int(r.errors) }),
      el('td', { class: 'num hide-sm', text: fmt.cost(r.cost) })));
    fill(document.getElementById('by-key'), keys.length ? keys : emptyRow(5, 'No requests in this period'));

    const modelSelect = document.getElementById('filter-model');
    if (modelSelect.options.length <= 1) {
      for (const r of data.by_model) modelSelect.append(el('option', { value: r.requested_model, text: r.requested_model }));
    }
  }

  async function loadKeys() {
    try {
      const data = await api('GET', '/keys');
      const select = document.getElementById('filter-key');
      for (const k of data.keys) select.append(el('option', { value: k.id, text: k.name }));
    } catch (e) { /* the key list is only a filter */ }
  }

  document.addEventListener('DOMContentLoaded', () => {
    for (const button of document.querySelectorAll('#range button')) {
      button.addEventListener('click', () => {
        range = button.dataset.range;
        for (const b of document.querySelectorAll('#range button')) b.setAttribute('aria-pressed', String(b === button));
        load();
      });
    }
    document.getElementById('filter-model').addEventListener('change', load);
    document.getElementById('filter-key').addEventListener('change', load);
    loadKeys();
    load();
    timer = setInterval(() => { if (!document.hidden) load(); }, 15000);
    window.addEventListener('beforeunload', () => clearInterval(timer));
  });
})();
