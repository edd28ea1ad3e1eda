/* Playground: chat through a public dialect route (OpenAI, Ollama or Anthropic) and show the raw
   request and every response chunk exactly as it arrived. */
(function () {
  'use strict';
  const { api, el, fill } = DM;
  const history = [];
  let controller = null;

  const DIALECTS = {
    openai: {
      path: '/v1/chat/completions',
      headers: (key) => (key ? { authorization: 'Bearer ' + key } : {}),
      body(model, messages, system, stream, reasoning) {
        const body = { model, messages: (system ? [{ role: 'system', content: system }] : []).concat(messages), stream };
        if (stream) body.stream_options = { include_usage: true };
        if (reasoning) body.reasoning_effort = 'medium';
        return body;
      },
      // SSE: data: {...} per event; data: [DONE] at the end.
      frames: 'sse',
      delta(event) {
        const choice = event && event.choices && event.choices[0];
        const d = choice && (choice.delta || choice.message);
        return d ? { text: d.content || '', reasoning: d.reasoning_content || d.reasoning || '' } : null;
      },
      whole(body) { return this.delta(body); },
    },
    ollama: {
      path: '/api/chat',
      headers: (key) => (key ? { authorization: 'Bearer ' + key } : {}),
      body(model, messages, system, stream, reasoning) {
        const body = { model, messages: (system ? [{ role: 'system', content: system }] : []).concat(messages), stream };
        if (reasoning) body.think = true;
        return body;
      },
      frames: 'ndjson',
      delta(event) {
        const m = event && event.message;
        return m ? { text: m.content || '', reasoning: m.thinking || '' } : null;
      },
      whole(body) { return this.delta(body); },
    },
    anthropic: {
      path: '/v1/messages',
      headers: (key) => Object.assign({ 'anthropic-version': '2023-06-01' }, key ? { 'x-api-key': key } : {}),
      body(model, messages, system, stream, reasoning) {
        const body = { model, max_tokens: 1024, messages, stream };
        if (system) body.system = system;
        if (reasoning) body.thinking = { type: 'enabled', budget_tokens: 1024 };
        return body;
      },
      frames: 'sse',
      delta(event) {
        if (!event || event.type !== 'content_block_delta') return null;
        return { text: event.delta.text || '', reasoning: event.delta.thinking || '' };
      },
      whole(body) {
        const blocks = (body && body.content) || [];
        return {
          text: blocks.filter((b) => b.type === 'text').map((b) => b.text).join(''),
          reasoning: blocks.filter((b) => b.type === 'thinking').map((b) => b.thinking).join(''),
        };
      },
    },
  };

  const $ = (id) => document.getElementById(id);

  function bubble(role, text) {
    const empty = $('transcript-empty');
    if (empty) empty.remove();
    const node = el('div', { class: 'msg ' + role });
    if (role === 'assistant') {
      node.append(el('div', { class: 'reasoning', hidden: true }), el('span', { class: 'content' }));
    } else {
      node.textContent = text;
    }
    $('transcript').append(node);
    $('transcript').scrollTop = $('transcript').scrollHeight;
    return node;
  }

  function show(node, part) {
    if (!part) return;
    if (part.reasoning) {
      const r = node.querySelector('.reasoning');
      r.hidden = false;
      r.textContent += part.reasoning;
    }
    if (part.text) node.querySelector('.content').textContent += part.text;
    $('transcript').scrollTop = $('transcript').scrollHeight;
  }

  function frame(text, started) {
    const t = ((performance.now() - started) / 1000).toFixed(3) + 's';
    return el('span', { class: 'frame' }, el('span', { class: 't', text: '+' + t }), text);
  }

  /** Split a growing buffer into complete SSE data payloads or NDJSON lines; returns [items, rest]. */
  function split(buffer, kind) {
    const items = [];
    if (kind === 'ndjson') {
      const lines = buffer.split('\n');
      const rest = lines.pop();
      for (const line of lines) if (line.trim()) items.push(line);
      return [items, rest];
    }
    const events = buffer.replace(/\r\n/g, '\n').split('\n\n');
    const rest = events.pop();
    for (const block of events) {
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (data) items.push(data);
    }
    return [items, rest];
  }

  async function send(text) {
    const dialect = DIALECTS[$('dialect').value];
    const model = $('model').value;
    const key = $('api-key').value.trim();
    const stream = $('stream').checked;
    history.push({ role: 'user', content: text });
    bubble('user', text);
    const reply = bubble('assistant');
    const body = dialect.body(model, history.slice(), $('system').value.trim(), stream, $('reasoning').checked);
    const headers = Object.assign({ 'content-type': 'application/json' }, dialect.headers(key));
    const shown = Object.assign({}, headers);
    for (const h of ['authorization', 'x-api-key']) if (shown[h]) shown[h] = shown[h].replace(/(sk-dm-|Bearer |)(.{0,4}).*/, '$1$2…');
    $('req-line').textContent = 'POST ' + dialect.path;
    $('raw-request').textContent = Object.entries(shown).map(([k, v]) => k + ': ' + v).join('\n') + '\n\n' + JSON.stringify(body, null, 2);
    const out = fill($('raw-response'));
    $('res-line').textContent = 'waiting…';
    controller = new AbortController();
    $('send').hidden = true;
    $('stop').hidden = false;
    const started = performance.now();
    let answer = '';
    try {
      const res = await fetch(dialect.path, { method: 'POST', headers, body: JSON.stringify(body), signal: controller.signal, credentials: 'omit' });
      $('res-line').textContent = res.status + ' ' + res.statusText + ' · ' + (res.headers.get('content-type') || '');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      let whole = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, { stream: true });
        out.append(frame(chunk, started));
        out.scrollTop = out.scrollHeight;
        whole += chunk;
        if (!res.ok || !stream) continue;
        buffer += chunk;
        let items;
        [items, buffer] = split(buffer, dialect.frames);
        for (const item of items) {
          if (item === '[DONE]') continue;
          let event;
          try { event = JSON.parse(item); } catch (e) { continue; }
          if (event.error) {
            reply.className = 'msg error';
            reply.textContent = (event.error.message || JSON.stringify(event.error));
            continue;
          }
          const part = dialect.delta(event);
          if (part) answer += part.text;
          show(reply, part);
        }
      }
      $('res-line').textContent += ' · ' + ((performance.now() - started) / 1000).toFixed(2) + 's';
      if (!res.ok) {
        let message = whole;
        try {
          const parsed = JSON.parse(whole);
          message = (parsed.error && (parsed.error.message || parsed.error)) || whole;
        } catch (e) { /* not JSON */ }
        reply.className = 'msg error';
        reply.textContent = res.status + ': ' + message;
        history.pop();
        return;
      }
      if (!stream) {
        const part = dialect.whole(JSON.parse(whole));
        answer = part ? part.text : '';
        show(reply, part);
      }
      history.push({ role: 'assistant', content: answer });
    } catch (e) {
      reply.className = 'msg error';
      reply.textContent = e.name === 'AbortError' ? 'Stopped.' : 'Request failed: ' + e.message;
      if (e.name === 'AbortError' && answer) history.push({ role: 'assistant', content: answer });
      else history.pop();
    } finally {
      controller = null;
      $('send').hidden = false;
      $('stop').hidden = true;
    }
  }

  async function loadModels() {
    const data = await api('GET', '/models');
    const select = $('model');
    const groups = data.backends.map((b) => el('optgroup', { label: b.name }, b.models.map((m) => el('option', { value: m.id, text: m.id }))));
    const aliases = data.aliases.filter((a) => a.resolves_to).map((a) => el('option', { value: a.name, text: a.name + ' → ' + a.resolves_to }));
    fill(select, groups, aliases.length ? el('optgroup', { label: 'aliases' }, aliases) : null);
    const saved = sessionStorage.getItem('dm-play-model');
    if (saved && Array.from(select.options).some((o) => o.value === saved)) select.value = saved;
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('api-key').value = sessionStorage.getItem('dm-play-key') || '';
    $('api-key').addEventListener('change', () => sessionStorage.setItem('dm-play-key', $('api-key').value.trim()));
    $('model').addEventListener('change', () => sessionStorage.setItem('dm-play-model', $('model').value));
    $('composer').addEventListener('submit', (event) => {
      event.preventDefault();
      const text = $('prompt').value.trim();
      if (!text || controller) return;
      $('prompt').value = '';
      send(text);
    });
    $('prompt').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey) {
        event.preventDefault();
        $('composer').requestSubmit();
      }
    });
    $('stop').addEventListener('click', () => { if (controller) controller.abort(); });
    $('clear').addEventListener('click', () => {
      history.length = 0;
      fill($('transcript'), el('div', { class: 'muted', id: 'transcript-empty', text: 'Send a message to start.' }));
      $('raw-request').textContent = '—';
      $('raw-response').textContent = '—';
      $('req-line').textContent = '';
      $('res-line').textContent = '';
    });
    loadModels().catch((e) => DM.toast(e.message, 'error'));
  });
})();
