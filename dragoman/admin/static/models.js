/* Models: per backend, with capabilities, aliases and per-model overrides (validated JSON). */
(function () {
  'use strict';
  const { api, el, fill, fmt, badge, busy, emptyRow, openDialog } = DM;
  const CAPS = [['vision', 'vision'], ['tools', 'tools'], ['reasoning', 'reasoning'], ['json_schema', 'json schema'], ['embeddings', 'embeddings']];
  let state = null;
  let refreshedAt = null;
  let pullTimer = null;

  function capabilityBadges(caps) {
    const shown = CAPS.filter(([key]) => caps[key]).map(([, label]) => badge(label, 'accent'));
    if (!caps.chat) shown.unshift(badge('no chat', 'warn'));
    return el('div', { class: 'badges' }, shown.length ? shown : el('span', { class: 'muted', text: 'text only' }));
  }

  function backendCard(b) {
    const head = el('div', { class: 'card-head backend-head' },
      el('span', { class: 'dot ' + (b.reachable ? 'ok' : 'err') }),
      el('span', { class: 'name break', text: b.name }),
      el('span', { class: 'badge', text: b.type }),
      el('span', { class: 'muted', text: fmt.int(b.model_count) + (b.model_count === 1 ? ' model' : ' models') }),
      b.last_error ? el('div', { class: 'error', text: b.last_error }) : null);
    const rows = b.models.map((m) => el('tr', {},
      el('td', { class: 'key-name' }, el('div', {}, el('div', { class: 'break' }, el('b', { text: m.name }), m.pulled ? badge('pulled', 'accent') : null), el('div', { class: 'muted mono break', text: m.id }))),
      el('td', {}, capabilityBadges(m.capabilities)),
      el('td', { class: 'num hide-sm', text: m.context_length ? fmt.compact(m.context_length) : '—' }),
      el('td', {}, el('div', { class: 'badges' }, m.aliases.length ? m.aliases.map((a) => el('span', { class: 'chip', text: a })) : el('span', { class: 'muted', text: '—' }))),
      el('td', {}, el('div', { class: 'badges' }, m.overrides.length ? m.overrides.map((p) => el('span', { class: 'chip', text: p })) : el('span', { class: 'muted', text: '—' }))),
      el('td', {}, el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'small', text: 'Override', onclick: () => editOverride(m.id) })))));
    const table = el('div', { class: 'table-wrap' }, el('table', { class: 'stack' },
      el('thead', {}, el('tr', {}, el('th', { text: 'Model' }), el('th', { text: 'Capabilities' }), el('th', { class: 'num hide-sm', text: 'Context' }),
        el('th', { text: 'Aliases' }), el('th', { text: 'Overrides' }), el('th'))),
      el('tbody', {}, rows.length ? rows : emptyRow(6, b.reachable ? 'This backend lists no models.' : 'Not reachable: no models listed.'))));
    DM.labelCells(table.querySelector('tbody'));
    return el('div', { class: 'card', dataset: { backend: b.name } }, head, el('div', { class: 'card-body tight' }, table));
  }

  function render(data) {
    state = data;
    refreshedAt = new Date();
    fill(document.getElementById('backends'), data.backends.length ? data.backends.map(backendCard) : el('div', { class: 'card' }, el('div', { class: 'empty', text: 'No backends.' })));
    const aliases = data.aliases.map((a) => el('tr', {},
      el('td', {}, el('b', { class: 'break', text: a.name })),
      el('td', {}, el('div', { class: 'badges' }, a.targets.map((t) => el('span', { class: 'chip', text: t }))),
        el('div', { class: 'muted', text: a.resolves_to ? '→ now ' + a.resolves_to : (a.name.match(/[*?[]/) ? 'glob' : 'resolves to nothing yet') })),
      el('td', {}, el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'small', text: 'Edit', onclick: () => editAlias(a) }),
        el('button', { type: 'button', class: 'small danger', text: 'Delete', onclick: (e) => deleteAlias(a.name, e.currentTarget) })))));
    fill(document.getElementById('aliases'), aliases.length ? aliases : emptyRow(3, 'No aliases.'));
    const overrides = Object.entries(data.overrides).map(([pattern, value]) => el('tr', {},
      el('td', {}, el('b', { class: 'break mono', text: pattern })),
      el('td', {}, el('pre', { class: 'json', text: JSON.stringify(value, null, 2) })),
      el('td', {}, el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'small', text: 'Edit', onclick: () => editOverride(pattern) }),
        el('button', { type: 'button', class: 'small danger', text: 'Delete', onclick: (e) => deleteOverride(pattern, e.currentTarget) })))));
    fill(document.getElementById('overrides'), overrides.length ? overrides : emptyRow(3, 'No overrides.'));
    const created = (data.created || []).map((c) => el('tr', {},
      el('td', {}, el('b', { class: 'break', text: c.name })),
      el('td', {}, el('span', { class: 'chip', text: c.from || '—' }),
        el('div', { class: 'muted', text: c.resolves_to ? '→ now ' + c.resolves_to : 'resolves to nothing yet' })),
      el('td', {}, c.system ? el('div', { class: 'break', text: c.system }) : null,
        Object.keys(c.parameters).length ? el('pre', { class: 'json', text: JSON.stringify(c.parameters) }) : null)));
    const pulls = (data.pulls || []).map((p) => el('tr', {},
      el('td', {}, el('b', { class: 'break', text: p.backend + '/' + p.name })),
      el('td', {}, el('span', { text: p.status }),
        p.total ? el('progress', { max: String(p.total), value: String(p.completed || 0) }) : null),
      el('td', { class: 'num', text: p.total ? Math.floor(100 * (p.completed || 0) / p.total) + '%' : '' })));
    fill(document.getElementById('created'), created.concat(pulls).length ? created.concat(pulls)
      : emptyRow(3, 'No created models and no pull running. Create with POST /api/create, pull with dragoman pull.'));
    clearTimeout(pullTimer);  // while a pull runs, its progress is read again every second
    if (pulls.length) pullTimer = setTimeout(() => api('GET', '/models').then(render).catch(() => {}), 1000);
    tick();
  }

  function tick() {
    if (refreshedAt) document.getElementById('refreshed').textContent = 'Updated ' + fmt.ago(refreshedAt.toISOString());
  }

  function editOverride(pattern) {
    const form = document.getElementById('override-form');
    form.reset();
    form.elements.pattern.value = pattern || '';
    const current = pattern && state && state.overrides[pattern];
    form.elements.json.value = JSON.stringify(current || { temperature: 0.7 }, null, 2);
    openDialog(document.getElementById('override-dialog'));
  }

  function editAlias(alias) {
    const form = document.getElementById('alias-form');
    form.reset();
    form.elements.name.value = alias ? alias.name : '';
    form.elements.targets.value = alias ? alias.targets.join(', ') : '';
    openDialog(document.getElementById('alias-dialog'));
  }

  async function saveOverride(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const error = form.querySelector('[data-role="error"]');
    const pattern = form.elements.pattern.value.trim();
    let value;
    try {
      value = JSON.parse(form.elements.json.value);
    } catch (e) {
      error.textContent = 'Not valid JSON: ' + e.message;
      return;
    }
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      error.textContent = 'An override is a JSON object, e.g. {"temperature": 0.2}';
      return;
    }
    if (!pattern) {
      error.textContent = 'Name a model or a glob.';
      return;
    }
    await busy(form.querySelector('button[type="submit"]'), async () => {
      render(await api('PUT', '/overrides/' + encodeURIComponent(pattern), value));
      document.getElementById('override-dialog').close();
      DM.toast('Override for “' + pattern + '” saved and applied');
    }, error);
  }

  async function saveAlias(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const error = form.querySelector('[data-role="error"]');
    const name = form.elements.name.value.trim();
    const targets = form.elements.targets.value.split(',').map((t) => t.trim()).filter(Boolean);
    if (!name || !targets.length) {
      error.textContent = 'An alias needs a name and at least one target.';
      return;
    }
    await busy(form.querySelector('button[type="submit"]'), async () => {
      render(await api('PUT', '/aliases/' + encodeURIComponent(name), { targets }));
      document.getElementById('alias-dialog').close();
      DM.toast('Alias “' + name + '” saved');
    }, error);
  }

  async function deleteAlias(name, button) {
    if (!(await DM.confirm('Delete alias?', 'Clients asking for “' + name + '” will get a 404.', 'Delete'))) return;
    await busy(button, async () => render(await api('DELETE', '/aliases/' + encodeURIComponent(name))));
  }

  async function deleteOverride(pattern, button) {
    if (!(await DM.confirm('Delete override?', 'Requests for “' + pattern + '” go through unchanged.', 'Delete'))) return;
    await busy(button, async () => render(await api('DELETE', '/overrides/' + encodeURIComponent(pattern))));
  }

  async function load() {
    try {
      render(await api('GET', '/models'));
    } catch (e) {
      DM.toast(e.message, 'error');
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('refresh').addEventListener('click', (event) => busy(event.currentTarget, async () => {
      render(await api('POST', '/models/refresh'));
      DM.toast('Model lists refreshed from every backend');
    }));
    document.getElementById('new-override').addEventListener('click', () => editOverride(''));
    document.getElementById('new-alias').addEventListener('click', () => editAlias(null));
    document.getElementById('override-form').addEventListener('submit', saveOverride);
    document.getElementById('alias-form').addEventListener('submit', saveAlias);
    load();
    // Automatic refresh: the server re-lists backends when its cache is older than refresh_seconds.
    setInterval(() => { if (!document.hidden && !document.querySelector('dialog[open]')) load(); }, 30000);
    setInterval(tick, 10000);
  });
})();
