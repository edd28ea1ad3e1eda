/* dragoman admin: shared helpers (DM.*). No innerHTML with data anywhere: text goes in as text. */
(function () {
  'use strict';

  const csrfToken = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute('content') : '';
  };

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  /** Call the admin API: JSON in and out, CSRF header on every unsafe method. */
  async function api(method, path, body) {
    const headers = { accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET' && method !== 'HEAD') headers['x-csrf-token'] = csrfToken();
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch('/admin/api' + path, init);
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) {
      window.location.assign('/admin/login?next=' + encodeURIComponent(window.location.pathname));
      throw new ApiError(401, 'signed out', data);
    }
    if (!res.ok) {
      const message = data && data.error && data.error.message ? data.error.message : res.status + ' ' + res.statusText;
      throw new ApiError(res.status, message, data);
    }
    return data;
  }

  /** el('td', {class: 'num', text: '12'}, child, 'text', ...): children and text are never parsed as HTML. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    applyProps(node, props);
    append(node, children);
    return node;
  }

  function applyProps(node, props) {
    if (!props) return;
    for (const [name, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'class') node.className = value;
      else if (name === 'dataset') Object.assign(node.dataset, value);
      else if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
      else if (name === 'style') Object.assign(node.style, value); // CSSOM: allowed by the CSP
      else node.setAttribute(name, value === true ? '' : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === 'text') node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    append(node, children);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function fill(node, ...children) {
    clear(node);
    append(node, children);
    return node;
  }

  /** Label every cell with its column's header, for the stacked phone layout (table.stack). */
  function labelCells(tbody) {
    const table = tbody.closest('table');
    const heads = Array.from(table.querySelectorAll('thead th')).map((th) => th.textContent.trim());
    for (const row of tbody.rows) {
      Array.from(row.cells).forEach((cell, i) => {
        if (heads[i] && !cell.classList.contains('key-name') && cell.colSpan === 1) cell.dataset.label = heads[i];
      });
    }
    return tbody;
  }

  /* ---------- formatting ---------- */
  const nf = new Intl.NumberFormat();
  const fmt = {
    int: (n) => (n === null || n === undefined ? '–' : nf.format(n)),
    compact(n) {
      if (n === null || n === undefined) return '–';
      const abs = Math.abs(n);
      if (abs >= 1e9) return (n / 1e9).toFixed(abs >= 1e10 ? 0 : 1) + 'B';
      if (abs >= 1e6) return (n / 1e6).toFixed(abs >= 1e7 ? 0 : 1) + 'M';
      if (abs >= 1e4) return (n / 1e3).toFixed(abs >= 1e5 ? 0 : 1) + 'k';
      return nf.format(Math.round(n * 100) / 100);
    },
    ms(v) {
      if (v === null || v === undefined) return '–';
      if (v >= 10000) return (v / 1000).toFixed(1) + ' s';
      if (v >= 1000) return (v / 1000).toFixed(2) + ' s';
      return (v >= 100 ? Math.round(v) : Math.round(v * 10) / 10) + ' ms';
    },
    pct: (part, whole) => (whole ? (Math.round((part / whole) * 1000) / 10) + '%' : '0%'),
    cost: (v) => (v === null || v === undefined ? '–' : '$' + (v >= 1 ? v.toFixed(2) : v.toPrecision(2))),
    date(iso) {
      if (!iso) return '–';
      const d = new Date(iso);
      return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
    },
    time(iso) {
      const d = new Date(iso);
      return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
    },
    ago(iso) {
      if (!iso) return 'never';
      const s = (Date.now() - new Date(iso).getTime()) / 1000;
      if (s < 0) return 'in ' + fmt.span(-s);
      if (s < 45) return 'just now';
      return fmt.span(s) + ' ago';
    },
    span(s) {
      if (s < 90) return Math.round(s) + 's';
      if (s < 5400) return Math.round(s / 60) + ' min';
      if (s < 129600) return Math.round(s / 3600) + ' h';
      return Math.round(s / 86400) + ' d';
    },
  };

  /** A <input type="datetime-local"> value as ISO (UTC), or null. */
  function localToIso(value) {
    if (!value) return null;
    const d = new Date(value);
    return Number.isNaN(d.getTime()) ? null : d.toISOString();
  }

  function isoToLocal(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' + pad(d.getMinutes());
  }

  /* ---------- toasts, dialogs, clipboard ---------- */
  function toast(message, kind) {
    const box = document.getElementById('toasts');
    if (!box) return;
    const node = el('div', { class: 'toast' + (kind === 'error' ? ' error' : ''), role: kind === 'error' ? 'alert' : 'status', text: message });
    box.append(node);
    setTimeout(() => node.remove(), kind === 'error' ? 7000 : 3500);
  }

  function openDialog(dialog) {
    const error = dialog.querySelector('[data-role="error"]');
    if (error) error.textContent = '';
    if (!dialog.open) dialog.showModal();
  }

  function confirm(title, message, okLabel) {
    const dialog = document.getElementById('confirm-dialog');
    dialog.querySelector('[data-role="title"]').textContent = title;
    dialog.querySelector('[data-role="message"]').textContent = message;
    dialog.querySelector('[data-role="ok"]').textContent = okLabel || 'Confirm';
    dialog.returnValue = '';
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    });
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (e) {
      const area = el('textarea', { readonly: true });
      area.value = text;
      document.body.append(area);
      area.select();
      let ok = false;
      try { ok = document.execCommand('copy'); } catch (err) { ok = false; }
      area.remove();
      return ok;
    }
  }

  /** Run an async action with the button disabled; errors become a toast or land in `errorNode`. */
  async function busy(button, action, errorNode) {
    if (button) button.disabled = true;
    try {
      return await action();
    } catch (e) {
      if (e && e.status === 401) return undefined;
      const message = e && e.message ? e.message : String(e);
      if (errorNode) errorNode.textContent = message;
      else toast(message, 'error');
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function badge(text, kind) {
    return el('span', { class: 'badge' + (kind ? ' ' + kind : ''), text });
  }

  function statusBadge(status) {
    return badge(String(status), status < 400 ? 'ok' : status === 499 ? 'warn' : 'err');
  }

  function emptyRow(colspan, text) {
    return el('tr', {}, el('td', { colspan, class: 'empty', text }));
  }

  /* ---------- page chrome ---------- */
  document.addEventListener('DOMContentLoaded', () => {
    const sidebar = document.getElementById('sidebar');
    const toggle = sidebar && sidebar.querySelector('.nav-toggle');
    if (toggle) {
      toggle.addEventListener('click', () => {
        const open = sidebar.classList.toggle('open');
        toggle.setAttribute('aria-expanded', String(open));
      });
    }
    document.addEventListener('click', (event) => {
      const closer = event.target.closest('[data-close]');
      if (closer) {
        const dialog = closer.closest('dialog');
        if (dialog) dialog.close();
      }
    });
  });

  window.DM = {
    api, ApiError, el, svg, clear, fill, labelCells, fmt, toast, openDialog, confirm, copy, busy, badge, statusBadge, emptyRow,
    localToIso, isoToLocal, csrfToken,
  };
})();
