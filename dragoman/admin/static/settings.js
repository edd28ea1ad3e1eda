/* Settings: backends (add, edit, test, delete), secrets always masked; instance facts. */
(function () {
  'use strict';
  const { api, el, fill, badge, busy, emptyRow, openDialog } = DM;
  const MAIN = ['base_url', 'api_key', 'models'];
  let data = null;
  let editing = null;

  function row(b) {
    const s = b.settings || {};
    return el('tr', { dataset: { backend: b.name } },
      el('td', {}, el('b', { class: 'break', text: b.name })),
      el('td', {}, el('span', { class: 'badge', text: b.type || '?' })),
      el('td', { class: 'muted break', text: s.base_url || '—' }),
      el('td', {}, s.api_key ? el('span', { class: 'chip', dataset: { testid: 'masked-key' }, text: s.api_key }) : el('span', { class: 'muted', text: '—' })),
      el('td', { class: 'hide-sm' }, badge(b.source === 'admin' ? 'edited here' : 'config file', b.source === 'admin' ? 'accent' : '')),
      el('td', {}, b.reachable ? badge(b.model_count + (b.model_count === 1 ? ' model' : ' models'), 'ok') : badge('unreachable', 'err'),
        b.last_error ? el('div', { class: 'muted ellipsis', title: b.last_error, text: b.last_error }) : null),
      el('td', {}, el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'small', text: 'Edit', onclick: () => openForm(b) }),
        el('button', { type: 'button', class: 'small danger', text: 'Remove', onclick: (e) => remove(b, e.currentTarget) }))));
  }

  function render(body) {
    data = body;
    DM.labelCells(fill(document.getElementById('backends'), body.backends.length ? body.backends.map(row) : emptyRow(7, 'No backends.')));
    const select = document.querySelector('#backend-form select[name="type"]');
    if (!select.options.length) for (const t of body.types) select.append(el('option', { value: t, text: t }));
  }

  function openForm(b) {
    editing = b;
    const form = document.getElementById('backend-form');
    form.reset();
    const f = form.elements;
    const s = b ? Object.assign({}, b.settings) : {};
    f.name.value = b ? b.name : '';
    f.name.readOnly = Boolean(b);
    f.type.value = b ? b.type : 'openai';
    f.base_url.value = s.base_url || '';
    f.api_key.value = s.api_key || '';
    f.models.value = Array.isArray(s.models) ? s.models.map((m) => (typeof m === 'string' ? m : JSON.stringify(m))).join(', ') : '';
    const extra = {};
    for (const [k, v] of Object.entries(s)) if (!MAIN.includes(k)) extra[k] = v;
    if (Array.isArray(s.models) && s.models.some((m) => typeof m !== 'string')) {
      extra.models = s.models;
      f.models.value = '';
    }
    f.extra.value = JSON.stringify(extra, null, 2);
    document.querySelector('#backend-dialog [data-role="title"]').textContent = b ? 'Edit backend ' + b.name : 'Add backend';
    form.querySelector('[data-role="result"]').hidden = true;
    openDialog(document.getElementById('backend-dialog'));
  }

  function collect(form) {
    const f = form.elements;
    let extra;
    try {
      extra = JSON.parse(f.extra.value || '{}');
    } catch (e) {
      throw new Error('Other settings: not valid JSON: ' + e.message);
    }
    if (!extra || typeof extra !== 'object' || Array.isArray(extra)) throw new Error('Other settings must be a JSON object');
    const settings = Object.assign({}, extra);
    if (f.base_url.value.trim()) settings.base_url = f.base_url.value.trim();
    if (f.api_key.value.trim()) settings.api_key = f.api_key.value.trim();
    const models = f.models.value.split(',').map((m) => m.trim()).filter(Boolean);
    if (models.length) settings.models = models;
    return { name: f.name.value.trim(), type: f.type.value, settings };
  }

  async function save(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const error = form.querySelector('[data-role="error"]');
    error.textContent = '';
    await busy(form.querySelector('button[type="submit"]'), async () => {
      const body = collect(form);
      if (!body.name) throw new Error('A name is required.');
      const path = editing ? '/backends/' + encodeURIComponent(editing.name) : '/backends';
      render(await api(editing ? 'PUT' : 'POST', path, editing ? { type: body.type, settings: body.settings } : body));
      document.getElementById('backend-dialog').close();
      DM.toast('Backend “' + body.name + '” saved and applied');
    }, error);
  }

  async function test(event) {
    const form = document.getElementById('backend-form');
    const error = form.querySelector('[data-role="error"]');
    const result = form.querySelector('[data-role="result"]');
    error.textContent = '';
    result.hidden = true;
    await busy(event.currentTarget, async () => {
      const body = collect(form);
      const answer = await api('POST', '/backends/test', body);
      result.hidden = false;
      result.className = 'wide notice ' + (answer.ok ? 'info' : 'error');
      const models = answer.models.length ? answer.models.slice(0, 12).join(', ') + (answer.models.length > 12 ? ', …' : '') : 'no models';
      result.textContent = answer.ok ? 'Connected: ' + answer.models.length + ' model(s): ' + models : 'Failed: ' + answer.error;
    }, error);
  }

  async function remove(b, button) {
    const ok = await DM.confirm('Remove backend?', 'Backend “' + b.name + '” and its models disappear at once. A backend from the config file stays removed after restarts until you add it again here.', 'Remove');
    if (!ok) return;
    await busy(button, async () => {
      render(await api('DELETE', '/backends/' + encodeURIComponent(b.name)));
      DM.toast('Backend “' + b.name + '” removed');
    });
  }

  async function info() {
    const body = await api('GET', '/info');
    const facts = [['Version', body.version], ['Client auth (auth.mode)', body.auth_mode], ['Database', body.database],
      ['Client dialects', body.dialects.join(', ')], ['Admin API', '/admin/api (docs/admin-api.md)']];
    fill(document.getElementById('info'), facts.map(([k, v]) => el('div', {}, el('div', { class: 'muted', text: k }), el('div', { text: v }))));
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('new-backend').addEventListener('click', () => openForm(null));
    document.getElementById('backend-form').addEventListener('submit', save);
    document.querySelector('#backend-form [data-role="test"]').addEventListener('click', test);
    api('GET', '/backends').then(render).catch((e) => DM.toast(e.message, 'error'));
    info().catch((e) => DM.toast(e.message, 'error'));
  });
})();
