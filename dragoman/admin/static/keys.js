/* Keys: create (secret shown once), edit, disable, revoke, and each key's usage.
   Keys set in the configuration (source "config") are shown read-only: they are changed there. */
(function () {
  'use strict';
  const { api, el, fill, fmt, badge, busy, emptyRow, openDialog } = DM;
  let keys = [];
  let editing = null; // the key being edited, or null when creating

  /** Limits, budget and expiry, one short line each (only the ones set). */
  function limits(k) {
    const lines = [];
    const rate = [];
    if (k.rpm) rate.push(fmt.int(k.rpm) + ' req/min');
    if (k.tpm) rate.push(fmt.compact(k.tpm) + ' tok/min');
    if (k.max_parallel) rate.push(k.max_parallel + ' parallel');
    if (rate.length) lines.push(rate.join(' · '));
    const money = [];
    if (k.budget_tokens) money.push(fmt.compact(k.budget_tokens) + ' tokens');
    if (k.budget_cost) money.push(fmt.cost(k.budget_cost));
    if (money.length) lines.push('budget ' + money.join(' + ') + ' / ' + (k.budget_period || '?'));
    if (k.expires_at) lines.push((k.expired ? 'expired ' : 'expires ') + fmt.date(k.expires_at));
    return lines.length ? el('div', { class: 'lines' }, lines.map((l) => el('span', { text: l })))
      : el('span', { class: 'muted', text: 'unlimited' });
  }

  function status(k) {
    if (!k.enabled) return badge('disabled', 'warn');
    if (k.expired) return badge('expired', 'err');
    return badge('active', 'ok');
  }

  function actions(k) {
    const usage = el('button', { type: 'button', class: 'small', text: 'Usage', onclick: () => showUsage(k) });
    if (k.source === 'config') return el('div', { class: 'actions' }, usage);
    return el('div', { class: 'actions' }, usage,
      el('button', { type: 'button', class: 'small', text: 'Edit', onclick: () => edit(k) }),
      el('button', { type: 'button', class: 'small', text: k.enabled ? 'Disable' : 'Enable', onclick: (e) => toggle(k, e.currentTarget) }),
      el('button', { type: 'button', class: 'small danger', text: 'Revoke', onclick: (e) => revoke(k, e.currentTarget) }));
  }

  /** The key's hint, or for a key set in the configuration a note that it is changed there. */
  function secretCell(k) {
    if (k.source !== 'config') return el('span', { class: 'chip', text: 'sk-dm-…' + k.hint });
    return el('div', { class: 'lines', title: 'Set in the configuration (auth.keys, --api-key or DRAGOMAN_API_KEY); change it there.' },
      badge('config', 'accent'), el('span', { class: 'muted', text: 'read-only' }));
  }

  function row(k) {
    const usage = k.usage_7d;
    return el('tr', { dataset: { keyId: k.id, source: k.source } },
      el('td', { class: 'key-name break', text: k.name }),
      el('td', { class: 'hide-sm' }, secretCell(k)),
      el('td', {}, el('div', { class: 'badges' }, k.models.map((m) => el('span', { class: 'chip', text: m })))),
      el('td', { class: 'hide-sm' }, limits(k)),
      el('td', {}, el('div', { class: 'lines' },
        el('span', { text: usage ? fmt.int(usage.requests) + ' req · ' + fmt.compact(usage.total_tokens) + ' tok' : 'no requests' }),
        el('span', { class: 'muted', title: k.last_used_at || '', text: k.last_used_at ? 'used ' + fmt.ago(k.last_used_at) : 'never used' }))),
      el('td', {}, status(k)),
      el('td', {}, actions(k)));
  }

  async function load() {
    const data = await api('GET', '/keys');
    keys = data.keys;
    DM.labelCells(fill(document.getElementById('keys'), keys.length ? keys.map(row) : emptyRow(7, 'No keys yet. Create one to give a client access.')));
  }

  function formValues(form) {
    const f = form.elements;
    const number = (name) => (f[name].value === '' ? null : Number(f[name].value));
    return {
      name: f.name.value.trim(),
      models: f.models.value.split(',').map((m) => m.trim()).filter(Boolean),
      rpm: number('rpm'), tpm: number('tpm'), max_parallel: number('max_parallel'),
      budget_tokens: number('budget_tokens'), budget_cost: number('budget_cost'),
      budget_period: f.budget_period.value || null,
      expires_at: DM.localToIso(f.expires_at.value),
      enabled: f.enabled.checked,
    };
  }

  function openForm(k) {
    editing = k;
    const dialog = document.getElementById('key-dialog');
    const form = document.getElementById('key-form');
    form.reset();
    const f = form.elements;
    dialog.querySelector('[data-role="title"]').textContent = k ? 'Edit key' : 'New key';
    dialog.querySelector('[data-role="submit"]').textContent = k ? 'Save changes' : 'Create key';
    if (k) {
      f.name.value = k.name;
      f.models.value = k.models.join(', ');
      for (const name of ['rpm', 'tpm', 'max_parallel', 'budget_tokens', 'budget_cost']) f[name].value = k[name] === null ? '' : k[name];
      f.budget_period.value = k.budget_period || '';
      f.expires_at.value = DM.isoToLocal(k.expires_at);
      f.enabled.checked = k.enabled;
    }
    openDialog(dialog);
    f.name.focus();
  }

  function edit(k) { openForm(k); }

  async function submit(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const error = form.querySelector('[data-role="error"]');
    const values = formValues(form);
    if (!values.name) {
      error.textContent = 'A name is required.';
      return;
    }
    if (!values.models.length) values.models = ['*'];
    await busy(form.querySelector('[data-role="submit"]'), async () => {
      if (editing) {
        await api('PATCH', '/keys/' + encodeURIComponent(editing.id), values);
        document.getElementById('key-dialog').close();
        DM.toast('Key “' + values.name + '” saved');
      } else {
        const created = await api('POST', '/keys', values);
        document.getElementById('key-dialog').close();
        showSecret(created);
      }
      await load();
    }, error);
  }

  function showSecret(created) {
    document.getElementById('secret-value').textContent = created.secret;
    document.getElementById('secret-name').textContent = 'Key “' + created.key.name + '” (' + created.key.id + ')';
    openDialog(document.getElementById('secret-dialog'));
  }

  async function toggle(k, button) {
    await busy(button, async () => {
      await api('PATCH', '/keys/' + encodeURIComponent(k.id), { enabled: !k.enabled });
      await load();
      DM.toast('Key “' + k.name + '” ' + (k.enabled ? 'disabled' : 'enabled'));
    });
  }

  async function revoke(k, button) {
    const ok = await DM.confirm('Revoke key?', 'Key “' + k.name + '” stops working within seconds, for good. Its usage records stay.', 'Revoke');
    if (!ok) return;
    await busy(button, async () => {
      await api('DELETE', '/keys/' + encodeURIComponent(k.id));
      await load();
      DM.toast('Key “' + k.name + '” revoked');
    });
  }

  async function showUsage(k) {
    const dialog = document.getElementById('usage-dialog');
    dialog.querySelector('[data-role="title"]').textContent = 'Usage of “' + k.name + '”';
    fill(document.getElementById('key-models'), emptyRow(4, 'Loading…'));
    fill(document.getElementById('key-recent'), emptyRow(5, 'Loading…'));
    openDialog(dialog);
    try {
      const data = await api('GET', '/keys/' + encodeURIComponent(k.id) + '/usage?range=7d');
      DMChart.draw(document.getElementById('key-chart'), {
        label: 'requests of this key', labels: data.series.map((p) => p.t), kind: 'line', integer: true,
        series: [
          { name: 'requests', values: data.series.map((p) => p.requests), area: true },
          { name: 'errors', values: data.series.map((p) => p.errors), color: 3 },
        ],
      });
      const models = data.by_model.map((r) => el('tr', {},
        el('td', { class: 'break', text: r.requested_model }), el('td', { class: 'num', text: fmt.int(r.requests) }),
        el('td', { class: 'num', text: fmt.compact(r.total_tokens) }), el('td', { class: 'num', text: fmt.int(r.errors) })));
      fill(document.getElementById('key-models'), models.length ? models : emptyRow(4, 'No requests in the last 7 days'));
      const recent = data.recent.map((r) => el('tr', {},
        el('td', { class: 'nowrap', text: fmt.time(r.ts) }), el('td', { class: 'break', text: r.requested_model }),
        el('td', {}, DM.statusBadge(r.status)), el('td', { class: 'num', text: fmt.int(r.prompt_tokens + r.completion_tokens) }),
        el('td', { class: 'num', text: fmt.ms(r.latency_ms) })));
      fill(document.getElementById('key-recent'), recent.length ? recent : emptyRow(5, 'No requests yet'));
    } catch (e) {
      DM.toast(e.message, 'error');
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('new-key').addEventListener('click', () => openForm(null));
    document.getElementById('key-form').addEventListener('submit', submit);
    document.getElementById('copy-secret').addEventListener('click', async (event) => {
      const ok = await DM.copy(document.getElementById('secret-value').textContent);
      event.currentTarget.lastChild.textContent = ok ? 'Copied' : 'Copy failed';
    });
    document.getElementById('secret-dialog').addEventListener('close', () => {
      document.getElementById('secret-value').textContent = '';
      const button = document.getElementById('copy-secret');
      button.lastChild.textContent = 'Copy';
    });
    load().catch((e) => DM.toast(e.message, 'error'));
  });
})();
