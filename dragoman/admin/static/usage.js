/* Usage log: filters (key, model, status, time), pagination, CSV export of the same filter. */
(function () {
  'use strict';
  const { api, el, fill, fmt, emptyRow } = DM;
  let page = 1;
  let pages = 1;
  let facets = true;

  function filterParams() {
    const f = document.getElementById('filters').elements;
    const params = new URLSearchParams();
    if (f.key.value) params.set('key', f.key.value);
    if (f.model.value.trim()) params.set('model', f.model.value.trim());
    if (f.status.value) params.set('status', f.status.value);
    const since = DM.localToIso(f.since.value);
    const until = DM.localToIso(f.until.value);
    if (since) params.set('since', since);
    if (until) params.set('until', until);
    return params;
  }

  function row(r) {
    const served = r.backend ? r.backend + '/' + (r.upstream_model || '?') : '—';
    return el('tr', {},
      el('td', { class: 'nowrap', title: r.ts, text: fmt.time(r.ts) }),
      el('td', { class: 'break', text: r.key_name || (r.key_id ? r.key_id : '—') }),
      el('td', { class: 'break', text: r.requested_model }),
      el('td', { class: 'hide-sm muted break', text: served }),
      el('td', { class: 'nowrap' }, DM.statusBadge(r.status), r.error_type ? el('span', { class: 'muted', text: ' ' + r.error_type }) : null),
      el('td', { class: 'num', text: fmt.int(r.prompt_tokens) + (r.tokens_estimated ? '~' : '') }),
      el('td', { class: 'num', text: fmt.int(r.completion_tokens) }),
      el('td', { class: 'num', text: fmt.ms(r.latency_ms) }),
      el('td', { class: 'num hide-sm', text: fmt.ms(r.ttft_ms) }),
      el('td', { class: 'hide-sm muted', text: r.dialect }));
  }

  async function load() {
    const params = filterParams();
    document.getElementById('export').setAttribute('href', '/admin/api/usage.csv?' + params.toString());
    params.set('page', String(page));
    params.set('per_page', document.getElementById('per-page').value);
    if (facets) params.set('facets', '1');
    let data;
    try {
      data = await api('GET', '/usage?' + params.toString());
    } catch (e) {
      fill(document.getElementById('rows'), emptyRow(10, e.message));
      return;
    }
    if (data.models) {
      facets = false;
      fill(document.getElementById('model-names'), data.models.map((m) => el('option', { value: m })));
    }
    pages = data.pages;
    DM.labelCells(fill(document.getElementById('rows'), data.items.length ? data.items.map(row) : emptyRow(10, 'No requests match these filters.')));
    document.getElementById('count').textContent = fmt.int(data.total) + (data.total === 1 ? ' request' : ' requests');
    document.getElementById('page-info').textContent = 'page ' + data.page + ' of ' + data.pages;
    document.getElementById('prev').disabled = data.page <= 1;
    document.getElementById('next').disabled = data.page >= data.pages;
  }

  document.addEventListener('DOMContentLoaded', async () => {
    const form = document.getElementById('filters');
    form.addEventListener('submit', (event) => { event.preventDefault(); page = 1; load(); });
    form.addEventListener('reset', () => setTimeout(() => { page = 1; load(); }, 0));
    form.elements.key.addEventListener('change', () => { page = 1; load(); });
    form.elements.status.addEventListener('change', () => { page = 1; load(); });
    document.getElementById('per-page').addEventListener('change', () => { page = 1; load(); });
    document.getElementById('prev').addEventListener('click', () => { if (page > 1) { page -= 1; load(); } });
    document.getElementById('next').addEventListener('click', () => { if (page < pages) { page += 1; load(); } });
    const query = new URLSearchParams(window.location.search);
    for (const name of ['model', 'status']) if (query.get(name)) form.elements[name].value = query.get(name);
    try {
      const data = await api('GET', '/keys');
      for (const k of data.keys) form.elements.key.append(el('option', { value: k.id, text: k.name }));
      if (query.get('key')) form.elements.key.value = query.get('key');
    } catch (e) { /* keys are only a filter */ }
    load();
  });
})();
