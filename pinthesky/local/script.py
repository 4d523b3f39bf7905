"""The local page's script, served as ``/app.js`` (the page loads nothing from elsewhere, and
its Content-Security-Policy lets no inline script run).

It builds the settings form from ``GET /api/settings`` (a fieldset per section, each field
with its description and allowed values from the option table), sends only the changed
fields with ``PATCH``, starts a manual clip or takes a still, lists the clips by day with their
pictures (a placeholder where there is none), plays, downloads and deletes them (delete asks
for a second click), and turns rectangles dragged on the live picture into the motion mask
(``motion.mask_rects``, drawn red) or the privacy mask (``camera.privacy_masks``, drawn blue
over black), both in pixels of the main picture as the viewer sees it.
"""

SCRIPT = rb"""'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k) e.append(k);
    return e;
  };
  const state = {
    settings: null, control: false, drawing: false, kind: 'motion',
    masks: { motion: [], privacy: [] },
  };
  // The rectangles of the kind being drawn.
  Object.defineProperty(state, 'rects', {
    get() { return state.masks[state.kind]; },
    set(v) { state.masks[state.kind] = v; },
  });
  const LOOK = {
    motion: { fill: 'rgba(255,40,40,0.35)', stroke: '#ff5050', key: ['motion', 'mask_rects'] },
    privacy: { fill: 'rgba(0,0,0,0.75)', stroke: '#3d7bff', key: ['camera', 'privacy_masks'] },
  };
  window.pinthesky = state;

  function say(text, bad) {
    const n = $('status');
    n.textContent = text;
    n.className = bad ? 'bad' : 'ok';
  }

  async function api(method, path, body) {
    const opts = { method, headers: {}, credentials: 'same-origin' };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const r = await fetch('api/' + path, opts);
    let doc = {};
    try { doc = await r.json(); } catch (e) { doc = { error: r.statusText }; }
    if (!r.ok) throw new Error((doc.errors || [doc.error || r.statusText]).join('; '));
    return doc;
  }

  // -- settings ------------------------------------------------------------------------
  function fieldValue(v) {
    if (v === null || v === undefined) return '';
    if (Array.isArray(v)) return v.map((r) => r.join(',')).join(';');
    return String(v);
  }

  function buildForm(doc) {
    state.settings = doc.settings;
    state.control = doc.control;
    const form = $('settings');
    form.replaceChildren();
    const sections = {};
    for (const opt of doc.options) {
      if (!sections[opt.section]) {
        sections[opt.section] = el('fieldset', {}, el('legend', { text: opt.section }));
        form.append(sections[opt.section]);
      }
      const key = opt.section + '.' + opt.name;
      const value = doc.settings[opt.section][opt.name];
      const input = el('input', {
        id: 'f-' + key, name: key, value: fieldValue(value),
        'data-was': fieldValue(value),
      });
      if (!state.control) input.disabled = true;
      sections[opt.section].append(el('label', { for: 'f-' + key },
        el('span', { class: 'name', text: opt.name }), input,
        el('small', { text: opt.help + ' (allowed: ' + opt.allowed + ')' })));
    }
    const save = el('button', { type: 'submit', id: 'save', text: 'Save settings' });
    if (!state.control) save.disabled = true;
    form.append(save);
    $('control-off').hidden = state.control;
    for (const b of document.querySelectorAll('.needs-control')) b.disabled = !state.control;
    for (const [kind, look] of Object.entries(LOOK)) {
      const [section, name] = look.key;
      state.masks[kind] = ((doc.settings[section] || {})[name] || []).map((r) => r.slice());
    }
    drawMask();
  }

  async function loadSettings() {
    try { buildForm(await api('GET', 'settings')); } catch (e) { say(e.message, true); }
  }

  async function saveSettings(ev) {
    ev.preventDefault();
    const body = {};
    for (const input of $('settings').querySelectorAll('input')) {
      if (input.value === input.getAttribute('data-was')) continue;
      const [section, name] = input.name.split('.');
      (body[section] = body[section] || {})[name] = input.value;
    }
    if (!Object.keys(body).length) { say('nothing changed'); return; }
    try {
      const doc = await api('PATCH', 'settings', body);
      buildForm(doc);
      say('saved: ' + (doc.changed.join(', ') || 'no change') +
          (doc.saved ? '' : ' (not kept across a restart: see the log)'));
    } catch (e) { say(e.message, true); }
  }

  // -- record, still -------------------------------------------------------------------
  async function record() {
    const duration = Number($('duration').value);
    try {
      await api('POST', 'record', { duration });
      say('recording ' + duration + ' s; the clip appears below when it is written');
      setTimeout(loadClips, (duration + 2) * 1000);
    } catch (e) { say(e.message, true); }
  }

  async function still() {
    try { say('still saved as ' + (await api('POST', 'still', {})).name); }
    catch (e) { say(e.message, true); }
  }

  // -- clips ---------------------------------------------------------------------------
  function clipCard(c) {
    const url = 'clips/' + encodeURIComponent(c.name);
    const picture = c.thumbnail
      ? el('img', { src: c.thumbnail, alt: 'clip at ' + c.time, class: 'thumb' })
      : el('div', { class: 'thumb placeholder', text: 'no picture' });
    const card = el('div', { class: 'clip', 'data-name': c.name }, picture);
    const facts = el('div', { text: c.time + ' \u00b7 ' + (c.size / 1e6).toFixed(1) + ' MB' +
      (c.trigger ? ' \u00b7 ' + c.trigger : '') + ' \u00b7 ' });
    if (c.playable) {
      const play = el('button', { type: 'button', class: 'play', text: 'play' });
      play.addEventListener('click', () => {
        const v = el('video', { controls: '', autoplay: '', muted: '', playsinline: '', src: url });
        picture.replaceWith(v);
        play.disabled = true;
      });
      facts.append(play, ' ');
    }
    facts.append(el('a', { href: url + '?download=1', download: c.name, text: 'download' }), ' ');
    const del = el('button', { type: 'button', class: 'delete needs-control', text: 'delete' });
    del.disabled = !state.control;
    let armed = null;
    del.addEventListener('click', async () => {
      if (!armed) {
        del.textContent = 'really delete?';
        del.classList.add('armed');
        armed = setTimeout(() => { armed = null; del.textContent = 'delete';
          del.classList.remove('armed'); }, 5000);
        return;
      }
      clearTimeout(armed);
      try { await api('DELETE', 'clips/' + encodeURIComponent(c.name)); say('deleted ' + c.name);
        loadClips(); }
      catch (e) { say(e.message, true); }
    });
    facts.append(del);
    card.append(facts);
    return card;
  }

  async function loadClips() {
    try {
      const doc = await api('GET', 'clips');
      const box = $('days');
      box.replaceChildren();
      if (!doc.days.length) box.append(el('p', { text: 'No clip yet.' }));
      for (const d of doc.days) {
        box.append(el('h3', { text: d.day + ' (' + d.clips.length + ')' }),
          el('div', { class: 'clips' }, ...d.clips.map(clipCard)));
      }
    } catch (e) { say(e.message, true); }
  }

  // -- mask drawing --------------------------------------------------------------------
  function pictureSize() {
    const s = state.settings;
    if (!s) return [1, 1];
    const [w, h] = s.camera.resolution.split('x').map(Number);
    return (s.camera.rotation === 90 || s.camera.rotation === 270) ? [h, w] : [w, h];
  }

  function drawMask() {
    const canvas = $('mask');
    const img = $('live');
    canvas.width = img.clientWidth;
    canvas.height = img.clientHeight;
    const [pw, ph] = pictureSize();
    const sx = canvas.width / pw, sy = canvas.height / ph;
    const g = canvas.getContext('2d');
    g.clearRect(0, 0, canvas.width, canvas.height);
    for (const [kind, look] of Object.entries(LOOK)) {
      const drag = kind === state.kind && state.drag ? [state.drag] : [];
      g.fillStyle = look.fill;
      g.strokeStyle = look.stroke;
      g.lineWidth = kind === state.kind ? 2 : 1;
      for (const [x, y, w, h] of state.masks[kind].concat(drag)) {
        g.fillRect(x * sx, y * sy, w * sx, h * sy);
        g.strokeRect(x * sx, y * sy, w * sx, h * sy);
      }
    }
    $('mask-count').textContent = state.rects.length + ' rectangle(s)';
  }

  function toPicture(ev) {
    const canvas = $('mask');
    const box = canvas.getBoundingClientRect();
    const [pw, ph] = pictureSize();
    const fx = Math.min(Math.max((ev.clientX - box.left) / box.width, 0), 1);
    const fy = Math.min(Math.max((ev.clientY - box.top) / box.height, 0), 1);
    return [Math.round(fx * pw), Math.round(fy * ph)];
  }

  function maskEvents() {
    const canvas = $('mask');
    let start = null;
    canvas.addEventListener('pointerdown', (ev) => {
      if (!state.drawing) return;
      start = toPicture(ev);
      canvas.setPointerCapture(ev.pointerId);
    });
    canvas.addEventListener('pointermove', (ev) => {
      if (!start) return;
      const [x, y] = toPicture(ev);
      state.drag = [Math.min(x, start[0]), Math.min(y, start[1]),
        Math.abs(x - start[0]), Math.abs(y - start[1])];
      drawMask();
    });
    canvas.addEventListener('pointerup', () => {
      if (state.drag && state.drag[2] >= 2 && state.drag[3] >= 2) state.rects.push(state.drag);
      state.drag = null;
      start = null;
      drawMask();
    });
    $('draw').addEventListener('click', () => {
      state.drawing = !state.drawing;
      canvas.classList.toggle('drawing', state.drawing);
      $('draw').textContent = state.drawing ? 'stop drawing' : 'draw mask';
    });
    $('mask-kind').addEventListener('change', () => {
      state.kind = $('mask-kind').value;
      drawMask();
    });
    $('clear-mask').addEventListener('click', () => { state.rects = []; drawMask(); });
    $('save-mask').addEventListener('click', async () => {
      const kind = state.kind, count = state.rects.length;
      const [section, name] = LOOK[kind].key;
      try {
        const doc = await api('PATCH', 'settings', { [section]: { [name]: state.rects } });
        buildForm(doc);
        say((kind === 'privacy' ? 'privacy mask' : 'mask') + ' saved: ' + count + ' rectangle(s)');
      } catch (e) { say(e.message, true); }
    });
    window.addEventListener('resize', drawMask);
    $('live').addEventListener('load', drawMask);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('settings').addEventListener('submit', saveSettings);
    $('record').addEventListener('click', record);
    $('still').addEventListener('click', still);
    maskEvents();
    loadSettings().then(loadClips).then(() => { document.body.dataset.ready = '1'; });
  });
})();
"""
