"""The local page's script, served as ``/app.js`` (the page loads nothing from elsewhere, and
its Content-Security-Policy lets no inline script run).

It builds the settings form from ``GET /api/settings`` (a fieldset per section, each field
with its description and allowed values from the option table), sends only the changed
fields with ``PATCH``, starts a manual clip or takes a still, lists the clips by day with their
pictures (a placeholder where there is none) in place of the page's last clips, and the
stills, plays, downloads and deletes them (delete asks for a second click), and turns
rectangles dragged on the live picture into the motion mask (``motion.mask_rects``, drawn red)
or the privacy mask (``camera.privacy_masks``, drawn blue over black), both in pixels of the
main picture as the viewer sees it. Clips, stills and health are fetched again every
``REFRESH_MS`` while the page is in view; a list is redrawn only when it changed, keeping the
cards that stay (a clip playing plays on).

Every address it asks for is absolute, built from ``location.origin``: a page opened as
``http://user:password@camera/`` has those credentials in its own address, and the browser
refuses to fetch an address that carries them (relative ones would).
"""

SCRIPT = rb"""'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  // This page's directory, without the user name and password its address may carry.
  const BASE = location.origin + location.pathname.replace(/[^/]*$/, '');
  const here = (path) => BASE + path;
  const REFRESH_MS = 10000;
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
    const r = await fetch(here('api/' + path), opts);
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
      const doc = await api('POST', 'record', { duration });
      say(doc.note ? 'recording: ' + doc.note
        : 'recording ' + duration + ' s; the clip appears below when it is written');
      setTimeout(refresh, (duration + 2) * 1000);
    } catch (e) { say(e.message, true); }
  }

  async function still() {
    try {
      say('still saved as ' + (await api('POST', 'still', {})).name);
      await loadStills();
    } catch (e) { say(e.message, true); }
  }

  // -- clips and stills ------------------------------------------------------------------
  const mb = (bytes) => (bytes / 1e6).toFixed(1) + ' MB';

  // Delete asks for a second click within 5 s; then the list is fetched again.
  function deleteButton(path, name, reload) {
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
      try { await api('DELETE', path); say('deleted ' + name); await reload(); }
      catch (e) { say(e.message, true); }
    });
    return del;
  }

  function clipCard(c) {
    const url = here('clips/' + encodeURIComponent(c.name));
    const picture = c.thumbnail
      ? el('img', { src: here(c.thumbnail), alt: 'clip at ' + c.time, class: 'thumb' })
      : el('div', { class: 'thumb placeholder', text: 'no picture' });
    const card = el('div', { class: 'clip', 'data-name': c.name }, picture);
    const triggers = (c.triggers && c.triggers.length ? c.triggers : [c.trigger]).filter(Boolean);
    const facts = el('div', { class: 'facts', text: c.time + ' \u00b7 ' + mb(c.size) +
      (triggers.length ? ' \u00b7 ' + triggers.join(' + ') : '') });
    if (c.playable) {
      const play = el('button', { type: 'button', class: 'play', text: 'play' });
      play.addEventListener('click', () => {
        const v = el('video', { controls: '', autoplay: '', muted: '', playsinline: '', src: url });
        picture.replaceWith(v);
        play.disabled = true;
      });
      facts.append(play);
    }
    facts.append(el('a', { href: url + '?download=1', download: c.name, text: 'download' }),
      deleteButton('clips/' + encodeURIComponent(c.name), c.name, loadClips));
    card.append(facts);
    return card;
  }

  // Cards by what they show: a refresh keeps those that stay, and the video playing in one.
  let cards = new Map();
  let clipsShown = null;

  async function loadClips() {
    const doc = await api('GET', 'clips');
    const shown = JSON.stringify(doc.days);
    if (shown === clipsShown) return;
    clipsShown = shown;
    const kept = new Map();
    const parts = [];
    for (const d of doc.days) {
      const grid = el('div', { class: 'clips' });
      for (const c of d.clips) {
        const key = JSON.stringify(c);
        const card = cards.get(key) || clipCard(c);
        kept.set(key, card);
        grid.append(card);
      }
      parts.push(el('h3', { text: d.day + ' (' + d.clips.length + ')' }), grid);
    }
    cards = kept;
    $('clips').replaceChildren(...(parts.length ? parts : [el('p', { text: 'No clip yet.' })]));
  }

  function stillCard(s) {
    const url = here('stills/' + encodeURIComponent(s.name));
    const picture = el('img', { src: url, alt: 'still ' + s.name, class: 'thumb',
      loading: 'lazy' });
    const card = el('div', { class: 'clip still', 'data-name': s.name },
      el('a', { href: url, target: '_blank', rel: 'noopener' }, picture));
    const facts = el('div', { class: 'facts',
      text: s.time + ' \u00b7 ' + Math.ceil(s.size / 1000) + ' kB' });
    facts.append(el('a', { href: url + '?download=1', download: s.name, text: 'download' }),
      deleteButton('stills/' + encodeURIComponent(s.name), s.name, loadStills));
    card.append(facts);
    return card;
  }

  let stillsShown = null;

  async function loadStills() {
    const doc = await api('GET', 'stills');
    const shown = JSON.stringify(doc);
    if (shown === stillsShown) return;
    stillsShown = shown;
    if (!doc.stills.length) {
      $('stills').replaceChildren(el('p', { text: 'No still yet.' }));
      return;
    }
    const older = doc.total - doc.stills.length;
    $('stills').replaceChildren(el('div', { class: 'clips stills' }, ...doc.stills.map(stillCard)),
      ...(older > 0 ? [el('p', { class: 'note', text: older + ' older stills not shown' })] : []));
  }

  // -- health ----------------------------------------------------------------------------
  async function loadHealth() {
    const doc = await api('GET', 'health');
    $('health').replaceChildren(...doc.rows.flatMap(([k, v]) =>
      [el('dt', { text: k }), el('dd', { text: v })]));
  }

  // While the page is in view; at once when it comes back into view.
  let unreachable = false;
  async function refresh() {
    if (document.hidden) return;
    try {
      for (const load of [loadClips, loadStills, loadHealth]) await load();
      if (unreachable) say('the camera answers again');
      unreachable = false;
    } catch (e) {
      unreachable = true;
      say('cannot reach the camera: ' + e.message, true);
    }
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
    loadSettings().then(refresh).then(() => { document.body.dataset.ready = '1'; });
    setInterval(refresh, REFRESH_MS);
    document.addEventListener('visibilitychange', refresh);
  });
})();
"""
