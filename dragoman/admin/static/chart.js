/* A small SVG chart (lines, areas or stacked bars over time) with a hover read-out. No library. */
(function () {
  'use strict';
  const { svg, el, fmt } = window.DM;

  /** A round axis: a step of 1, 2, 2.5 or 5 x 10^n (whole numbers only when `integer`), about 4 steps. */
  function scale(max, integer) {
    if (!(max > 0)) return integer ? { top: 4, step: 1 } : { top: 1, step: 0.25 };
    const raw = max / 4;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    const factors = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    let step = factors.map((f) => f * exp).find((s) => s >= raw);
    if (integer) step = Math.max(1, Math.round(step));
    return { top: step * Math.ceil(max / step - 1e-9), step };
  }

  const colour = (series, index) => (series.color === undefined ? index : series.color);

  function timeLabel(date, spanMs) {
    if (spanMs <= 36 * 3600 * 1000) return date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
    return date.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  }

  /**
   * draw(container, {labels: [iso...], series: [{name, values, area?}], kind: 'line' | 'bars',
   *                  format: (v) => string, integer: whole-number axis, empty: 'text when every value is 0'})
   * Series i gets CSS class s<i> (colours come from the stylesheet), or s<color> when it sets color (0-3).
   */
  function draw(container, options) {
    container._dmChart = options;
    render(container);
    if (!container._dmObserver && 'ResizeObserver' in window) {
      let last = container.clientWidth;
      container._dmObserver = new ResizeObserver(() => {
        if (container.clientWidth !== last) {
          last = container.clientWidth;
          render(container);
        }
      });
      container._dmObserver.observe(container);
    }
  }

  function render(container) {
    const opts = container._dmChart;
    const format = opts.format || fmt.compact;
    const labels = opts.labels.map((t) => new Date(t));
    const n = labels.length;
    const width = Math.max(container.clientWidth, 200);
    const height = Math.max(container.clientHeight, 100);
    const pad = { left: 46, right: 10, top: 10, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const stacked = opts.kind === 'bars';
    let max = 0;
    for (let i = 0; i < n; i++) {
      if (stacked) {
        max = Math.max(max, opts.series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
      } else {
        for (const s of opts.series) max = Math.max(max, s.values[i] || 0);
      }
    }
    const axis = scale(max, Boolean(opts.integer));
    const top = axis.top;
    const step = n > 1 ? plotW / (stacked ? n : n - 1) : plotW;
    const xAt = (i) => pad.left + (stacked ? step * (i + 0.5) : (n > 1 ? step * i : plotW / 2));
    const yAt = (v) => pad.top + plotH - (v / top) * plotH;

    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': opts.label || 'chart' });
    for (let t = 0; t * axis.step <= top + 1e-9; t++) {
      const value = axis.step * t;
      const y = yAt(value);
      root.append(svg('line', { class: 'grid-line', x1: pad.left, x2: width - pad.right, y1: y, y2: y }));
      root.append(svg('text', { class: 'axis', x: pad.left - 8, y: y + 4, 'text-anchor': 'end', text: format(value) }));
    }
    const spanMs = n > 1 ? labels[n - 1] - labels[0] : 0;
    const ticks = Math.max(2, Math.min(6, Math.floor(plotW / 90)));
    for (let k = 0; k < ticks && n > 0; k++) {
      const i = Math.round((k * (n - 1)) / (ticks - 1));
      const anchor = k === 0 ? 'start' : k === ticks - 1 ? 'end' : 'middle';
      root.append(svg('text', { class: 'axis', x: xAt(i), y: height - 6, 'text-anchor': anchor, text: timeLabel(labels[i], spanMs) }));
    }

    if (stacked) {
      const barW = Math.max(1, Math.min(28, step * 0.7));
      const base = new Array(n).fill(0);
      opts.series.forEach((s, si) => {
        for (let i = 0; i < n; i++) {
          const v = s.values[i] || 0;
          if (!v) continue;
          const y0 = yAt(base[i]);
          const y1 = yAt(base[i] + v);
          base[i] += v;
          root.append(svg('rect', { class: 's' + colour(s, si), x: xAt(i) - barW / 2, y: y1, width: barW, height: Math.max(1, y0 - y1), rx: 2 }));
        }
      });
    } else {
      opts.series.forEach((s, si) => {
        const points = [];
        for (let i = 0; i < n; i++) {
          if (s.values[i] === null || s.values[i] === undefined) continue;
          points.push([xAt(i), yAt(s.values[i])]);
        }
        if (!points.length) return;
        const path = points.map((p, i) => (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1)).join(' ');
        if (s.area) {
          const area = path + ` L${points[points.length - 1][0].toFixed(1)} ${yAt(0)} L${points[0][0].toFixed(1)} ${yAt(0)} Z`;
          root.append(svg('path', { class: 'area s' + colour(s, si), d: area }));
        }
        root.append(svg('path', { class: 'line s' + colour(s, si), d: path }));
        if (points.length === 1) root.append(svg('circle', { class: 's' + colour(s, si), cx: points[0][0], cy: points[0][1], r: 3 }));
      });
    }

    const cursor = svg('line', { class: 'cursor', x1: 0, x2: 0, y1: pad.top, y2: pad.top + plotH, visibility: 'hidden' });
    root.append(cursor);
    const overlay = svg('rect', { x: pad.left, y: pad.top, width: plotW, height: plotH, fill: 'transparent' });
    root.append(overlay);

    const tip = el('div', { class: 'tip', hidden: true });
    const showTip = (event) => {
      if (!n) return;
      const box = root.getBoundingClientRect();
      const x = ((event.clientX - box.left) / box.width) * width;
      const i = Math.max(0, Math.min(n - 1, Math.round(stacked ? (x - pad.left) / step - 0.5 : (x - pad.left) / (step || 1))));
      cursor.setAttribute('x1', xAt(i));
      cursor.setAttribute('x2', xAt(i));
      cursor.setAttribute('visibility', 'visible');
      const rows = opts.series.map((s, si) => el('div', { class: 'row' },
        el('i', { class: 'dot c' + (colour(s, si) + 1) }), s.name, el('b', { text: s.values[i] === null || s.values[i] === undefined ? '–' : format(s.values[i]) })));
      DM.fill(tip, el('div', { class: 'muted', text: labels[i].toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }) }), rows);
      tip.hidden = false;
      const px = (xAt(i) / width) * box.width;
      const left = px + 12 + tip.offsetWidth > box.width ? px - tip.offsetWidth - 12 : px + 12;
      tip.style.left = Math.max(0, left) + 'px';
      tip.style.top = '8px';
    };
    overlay.addEventListener('mousemove', showTip);
    overlay.addEventListener('mouseleave', () => {
      tip.hidden = true;
      cursor.setAttribute('visibility', 'hidden');
    });

    const children = [root, tip];
    if (max === 0) children.push(el('div', { class: 'none', text: opts.empty || 'No requests in this period' }));
    DM.fill(container, children);
  }

  window.DMChart = { draw };
})();
