// The operations page (docs/web-ui.md): reads and acts through the JSON API with the
// bearer token the operator typed in. Data only ever reaches the page as text
// (textContent, createElement), never as HTML.
'use strict';

(() => {
  const TOKEN = 'orch.token';
  const ROLE = 'orch.role';
  const POLL_MS = 1500;
  const main = document.getElementById('main');

  // --- building the page ------------------------------------------------------------------

  function h(tag, props, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') element.className = value;
      else if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
      else element.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  // The DOM's own replaceChildren writes null as "null": leave the empty ones out.
  function fill(container, ...children) {
    container.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  function when(text) {
    return text ? String(text).replace('T', ' ').replace(/\.\d+/, '') : '';
  }

  function shown(value) {
    return h('pre', {}, JSON.stringify(value, null, 1));
  }

  // columns: [heading, row => cell content]
  function table(rows, columns, id) {
    if (!rows.length) return h('p', { class: 'notice' }, 'none');
    return h(
      'table',
      { id },
      h('thead', {}, h('tr', {}, columns.map(([heading]) => h('th', {}, heading)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(row)))))),
    );
  }

  function instanceLink(id) {
    return h('a', { href: '/ui/instances/' + encodeURIComponent(id), class: 'instance-link' }, id);
  }

  function pager(page, params) {
    const link = (offset, text, rel) => {
      const next = new URLSearchParams(params);
      next.set('offset', String(offset));
      return h('a', { href: location.pathname + '?' + next, rel }, text);
    };
    return h(
      'p',
      { class: 'pager' },
      page.offset > 0 ? link(Math.max(0, page.offset - page.limit), '← newer', 'prev') : null,
      page.next_offset !== null ? link(page.next_offset, 'older →', 'next') : null,
    );
  }

  // --- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function toLogin() {
    location.assign('/ui/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  async function api(path, options = {}) {
    const token = sessionStorage.getItem(TOKEN);
    if (!token) {
      toLogin();
      throw new ApiError(401, 'not logged in');
    }
    const headers = { Authorization: 'Bearer ' + token };
    let body;
    if (options.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    const answer = await fetch(path, {
      method: options.method || 'GET',
      headers,
      body,
      cache: 'no-store',
      credentials: 'omit',
    });
    let data = null;
    try {
      data = await answer.json();
    } catch (_) {
      data = null;
    }
    if (answer.status === 401) {
      sessionStorage.removeItem(TOKEN);
      toLogin();
    }
    if (!answer.ok) throw new ApiError(answer.status, (data && data.error) || answer.statusText);
    return data;
  }

  function operator() {
    return sessionStorage.getItem(ROLE) === 'operator';
  }

  function failed(error) {
    fill(main, h('p', { class: 'error', role: 'alert' }, 'Error: ' + error.message));
  }

  // --- login ------------------------------------------------------------------------------

  function safeNext() {
    const next = new URLSearchParams(location.search).get('next') || '';
    // only a page of this site: never an address elsewhere
    return /^\/ui\/[^/]/.test(next) ? next : '/ui/instances';
  }

  function loginPage() {
    const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true, size: 40 });
    const message = h('p', { class: 'error', id: 'login-error', role: 'alert' });
    const submit = async (event) => {
      event.preventDefault();
      const token = input.value.trim();
      let answer;
      try {
        answer = await fetch('/api/whoami', { headers: { Authorization: 'Bearer ' + token }, credentials: 'omit' });
      } catch (error) {
        message.textContent = 'The server does not answer: ' + error.message;
        return;
      }
      if (!answer.ok) {
        message.textContent = answer.status === 401 ? 'Unknown token.' : 'The server answered ' + answer.status + '.';
        return;
      }
      const me = await answer.json();
      sessionStorage.setItem(TOKEN, token);
      sessionStorage.setItem(ROLE, me.role);
      location.assign(safeNext());
    };
    fill(main,
      h('h1', {}, 'Log in'),
      h(
        'form',
        { id: 'login', onsubmit: submit },
        h('label', { for: 'token' }, 'Access token '),
        input,
        ' ',
        h('button', { type: 'submit' }, 'Log in'),
      ),
      message,
      h('p', { class: 'notice' }, 'A token of ORCH_WEB_TOKENS; kept in this tab only (sessionStorage).'),
    );
    input.focus();
  }

  // --- instances --------------------------------------------------------------------------

  const FILTERS = [
    ['process', 'Process', { type: 'text' }],
    ['version', 'Version', { type: 'number', min: 1 }],
    ['state', 'State', ['', 'active', 'completed', 'cancelled']],
    ['business_key', 'Business key', { type: 'text' }],
    ['has_incident', 'Incident', ['', 'true', 'false']],
    ['started_after', 'Started after (UTC)', { type: 'datetime-local', step: 1 }],
    ['started_before', 'Started before (UTC)', { type: 'datetime-local', step: 1 }],
  ];

  function filterForm(params) {
    const fields = FILTERS.map(([name, label, kind]) => {
      const value = params.get(name) || '';
      const control = Array.isArray(kind)
        ? h('select', { name, id: 'filter-' + name }, kind.map((option) => h('option', { value: option, selected: option === value }, option || 'any')))
        : h('input', { ...kind, name, id: 'filter-' + name, value });
      return h('label', {}, label + ' ', control);
    });
    const submit = (event) => {
      event.preventDefault();
      const chosen = new URLSearchParams();
      for (const [name, value] of new FormData(event.target)) if (value) chosen.set(name, String(value));
      location.assign(location.pathname + '?' + chosen);
    };
    return h('form', { class: 'filters', id: 'filters', onsubmit: submit }, fields, h('button', { type: 'submit' }, 'Filter'));
  }

  async function instancesPage() {
    const params = new URLSearchParams(location.search);
    const page = await api('/api/instances?' + params);
    fill(main,
      h('h1', {}, 'Instances'),
      filterForm(params),
      table(page.items, [
        ['Instance', (i) => instanceLink(i.instance_id)],
        ['Process', (i) => i.process_key],
        ['Version', (i) => i.version],
        ['Business key', (i) => i.business_key || ''],
        ['State', (i) => h('span', { class: 'state-' + i.state }, i.state)],
        ['Incident', (i) => (i.has_incident ? h('span', { class: 'error' }, 'open incident') : '')],
        ['Started', (i) => when(i.started_at)],
        ['Ended', (i) => when(i.ended_at)],
      ], 'instances'),
      pager(page, params),
    );
  }

  // --- incidents --------------------------------------------------------------------------

  async function incidentsPage() {
    const params = new URLSearchParams(location.search);
    if (!params.has('open')) params.set('open', 'true');
    const query = new URLSearchParams(params);
    if (query.get('open') === 'all') query.delete('open');
    const page = await api('/api/incidents?' + query);
    const scope = (open, text) => {
      const next = new URLSearchParams(params);
      if (open === null) next.delete('open');
      else next.set('open', open);
      next.delete('offset');
      return h('a', { href: location.pathname + '?' + next }, text);
    };
    fill(main,
      h('h1', {}, params.get('open') === 'true' ? 'Open incidents' : 'Incidents'),
      h('p', {}, scope('true', 'open'), ' · ', scope('false', 'resolved'), ' · ', scope('all', 'all')),
      table(page.items, [
        ['Raised', (n) => when(n.created_at)],
        ['Process', (n) => n.process_key],
        ['Business key', (n) => n.business_key || ''],
        ['Element', (n) => n.node_id || ''],
        ['Kind', (n) => n.kind],
        ['Message', (n) => h('pre', { class: 'error-message' }, n.message || '')],
        ['Instance', (n) => instanceLink(n.instance_id)],
        ['Resolved', (n) => (n.resolved_at ? when(n.resolved_at) + ' (' + (n.resolution || '') + ')' : '')],
      ], 'incidents'),
      pager(page, params),
    );
  }

  // --- one instance -----------------------------------------------------------------------

  function section(id, title) {
    const body = h('div', { id: id + '-body' });
    return [h('section', { id }, h('h2', {}, title), body), body];
  }

  async function instancePage(id) {
    let detail = await api('/api/instances/' + encodeURIComponent(id));
    const summary = h('dl', { class: 'summary', id: 'summary' });
    const actions = h('p', { id: 'actions' });
    const feedback = h('p', { id: 'feedback', role: 'status' });
    const diagram = h('div', { id: 'diagram' });
    const diagramNote = h('p', { class: 'notice', id: 'diagram-note' });
    const [incidentsSection, incidentsBody] = section('incidents', 'Incidents');
    const [tasksSection, tasksBody] = section('tasks', 'Tasks');
    const [variablesSection, variablesBody] = section('variables', 'Variables');
    const [scopesSection, scopesBody] = section('scopes', 'Scopes and tokens');
    const [waitsSection, waitsBody] = section('waits', 'Children, timers and subscriptions');
    const [historySection, historyBody] = section('history', 'History');
    // Built once, not on every refresh: what the operator types stays while the page polls.
    const scopeChoice = h('select', { id: 'set-scope', name: 'scope' });
    const newValues = h('textarea', { id: 'set-values', name: 'variables', rows: 3, cols: 60, placeholder: '{"name": "value"}' });
    const setForm = operator()
      ? h('form', {
        id: 'set-variables',
        onsubmit: (event) => {
          event.preventDefault();
          let variables;
          try {
            variables = JSON.parse(newValues.value);
          } catch (error) {
            variables = undefined;
          }
          if (!variables || typeof variables !== 'object' || Array.isArray(variables)) {
            feedback.className = 'error';
            feedback.textContent = 'Set variables: write a JSON object, like {"limit": 500}';
            return;
          }
          const body = { variables, scope: scopeChoice.value || null };
          act('Set variables', '/api/instances/' + encodeURIComponent(id) + '/variables', body);
        },
      }, h('label', {}, 'Set in ', scopeChoice), ' ', newValues, ' ', h('button', { type: 'submit', id: 'set-submit' }, 'Set variables'))
      : null;
    fill(main,
      h('h1', {}, 'Instance ', h('code', {}, id)),
      summary, actions, feedback,
      h('h2', {}, 'Diagram'), diagramNote, diagram,
      incidentsSection, tasksSection, variablesSection, scopesSection, waitsSection, historySection,
    );
    if (setForm) variablesSection.append(setForm);
    const drawing = await drawDiagram(detail, diagram, diagramNote);

    const act = async (label, path, body) => {
      feedback.className = '';
      feedback.textContent = label + '…';
      try {
        const answer = await api(path, { method: 'POST', body });
        feedback.textContent = label + ': done. ' + JSON.stringify(answer);
      } catch (error) {
        feedback.className = 'error';
        feedback.textContent = label + ' failed: ' + error.message;
      }
      await refresh();
    };

    const render = () => {
      fill(summary,
        h('dt', {}, 'Process'), h('dd', {}, h('a', { href: '/ui/instances?process=' + encodeURIComponent(detail.process_key) }, detail.process_key), ' version ' + detail.version),
        h('dt', {}, 'Business key'), h('dd', {}, detail.business_key || '—'),
        h('dt', {}, 'State'), h('dd', {}, h('span', { id: 'state', class: 'state-' + detail.state }, detail.state)),
        h('dt', {}, 'Started'), h('dd', {}, when(detail.started_at)),
        h('dt', {}, 'Ended'), h('dd', {}, when(detail.ended_at) || '—'),
        detail.parent_id ? [h('dt', {}, 'Called by'), h('dd', {}, instanceLink(detail.parent_id))] : null,
      );
      fill(actions,
        operator() && detail.state === 'active'
          ? h('button', {
            type: 'button',
            id: 'cancel',
            onclick: () => {
              if (window.confirm('Cancel this instance?')) {
                act('Cancel', '/api/instances/' + encodeURIComponent(id) + '/cancel', { reason: 'cancelled on the web page' });
              }
            },
          }, 'Cancel instance')
          : null,
      );
      const incidents = [...detail.incidents].sort((a, b) => (a.resolved_at ? 1 : 0) - (b.resolved_at ? 1 : 0));
      fill(incidentsBody,
        incidents.length ? '' : h('p', { class: 'notice' }, 'none'),
        ...incidents.map((n) => h(
          'div',
          { class: 'incident' + (n.resolved_at ? ' resolved' : ''), id: 'incident-' + n.id, 'data-node': n.node_id || '' },
          h('strong', {}, n.node_id || 'instance'), ' — ', n.kind, ', attempt ', String(n.attempt ?? ''), ', ', when(n.created_at),
          n.resolved_at ? ' — resolved ' + when(n.resolved_at) + ' (' + (n.resolution || '') + ')' : '',
          h('pre', { class: 'error-message' }, n.message || ''),
          typeof n.details === 'string' ? h('pre', { class: 'details' }, n.details) : n.details ? shown(n.details) : null,
          !n.resolved_at && operator()
            ? h('button', {
              type: 'button',
              class: 'retry',
              onclick: () => act('Retry', '/api/incidents/' + encodeURIComponent(n.id) + '/retry', { retries: 1 }),
            }, 'Retry')
            : null,
        )),
      );
      fill(tasksBody, table(detail.tasks, [
        ['Element', (t) => t.node_id],
        ['Topic', (t) => t.topic],
        ['Status', (t) => t.status],
        ['Attempt', (t) => t.attempt],
        ['Retries left', (t) => t.retries_left],
        ['Worker', (t) => t.worker_id || ''],
        ['Last error', (t) => (t.last_error ? shown(t.last_error) : '')],
        ['Created', (t) => when(t.created_at)],
        ['Closed', (t) => when(t.closed_at)],
      ], 'task-table'));
      if (setForm) {
        setForm.hidden = detail.state !== 'active';
        const chosen = scopeChoice.value;
        fill(scopeChoice, detail.scopes.map((s) => h('option', { value: s.scope || '' }, scopeName(s))));
        scopeChoice.value = [...scopeChoice.options].some((o) => o.value === chosen) ? chosen : '';
      }
      const scoped = detail.scopes.filter((s) => s.variables && Object.keys(s.variables).length);
      fill(variablesBody,
        h('h3', {}, 'Instance'),
        variableTable(detail.variables || {}, 'variable-table'),
        ...scoped.map((s) => [
          h('h3', {}, s.kind + ' ' + (s.node_id || '') + (s.element !== undefined ? ' #' + s.element : '')),
          variableTable(s.variables),
        ]),
      );
      fill(scopesBody, table(detail.scopes, [
        ['Scope', (s) => s.kind + (s.node_id ? ' ' + s.node_id : '') + (s.element !== undefined ? ' #' + s.element : '')],
        ['Waiting at', (s) => s.tokens.map((t) => t.node_id + (t.task_id ? ' (task)' : '')).join(', ')],
        ['Multi-instance', (s) => (s.loop ? s.loop.started + ' started, ' + s.loop.completed + ' of ' + s.loop.elements + ' completed' : '')],
      ]));
      fill(waitsBody,
        h('h3', {}, 'Children'),
        table(detail.children, [
          ['Instance', (c) => instanceLink(c.instance_id)],
          ['Process', (c) => c.process_key],
          ['State', (c) => c.state],
          ['Open incidents', (c) => c.open_incidents ?? ''],
        ]),
        h('h3', {}, 'Timers'),
        table(detail.timers, [
          ['Element', (t) => t.node_id || ''], ['Kind', (t) => t.kind], ['Spec', (t) => shown(t.spec)],
          ['Due', (t) => when(t.due_at)], ['Fired', (t) => String(t.fired ?? '')],
        ]),
        h('h3', {}, 'Subscriptions'),
        table(detail.subscriptions, [
          ['Element', (s) => s.node_id || ''], ['Message', (s) => s.name], ['Correlation key', (s) => s.correlation_key ?? ''],
        ]),
      );
      fill(historyBody, table(detail.history, [
        ['At', (e) => when(e.at)],
        ['Kind', (e) => e.kind],
        ['Element', (e) => e.node_id || ''],
        ['Detail', (e) => (e.detail && Object.keys(e.detail).length ? shown(e.detail) : '')],
      ], 'history-table'));
      if (drawing) drawing.mark(detail);
    };

    let timer = null;
    const refresh = async () => {
      clearTimeout(timer);
      try {
        detail = await api('/api/instances/' + encodeURIComponent(id));
        render();
      } catch (error) {
        feedback.className = 'error';
        feedback.textContent = 'Refresh failed: ' + error.message;
      }
      // an active instance changes under our eyes; an ended one does not
      if (detail.state === 'active') timer = setTimeout(refresh, POLL_MS);
    };
    render();
    if (detail.state === 'active') timer = setTimeout(refresh, POLL_MS);
  }

  function scopeName(scope) {
    if (!scope.scope) return 'the process';
    return scope.kind + ' ' + (scope.node_id || '') + (scope.element !== undefined ? ' #' + scope.element : '');
  }

  function variableTable(variables, id) {
    const rows = Object.entries(variables).map(([name, value]) => ({ name, value }));
    return table(rows, [['Name', (v) => v.name], ['Value', (v) => shown(v.value)]], id);
  }

  async function drawDiagram(detail, container, note) {
    if (typeof window.BpmnJS !== 'function') {
      note.textContent = 'No diagram: bpmn-js is not installed on the server (./dev setup installs it).';
      container.hidden = true;
      return null;
    }
    let answer;
    try {
      answer = await api('/api/definitions/' + encodeURIComponent(detail.process_key) + '/' + detail.version + '/diagram');
    } catch (error) {
      note.textContent = 'No diagram: ' + error.message;
      container.hidden = true;
      return null;
    }
    const viewer = new window.BpmnJS({ container });
    try {
      await viewer.importXML(answer.xml, answer.diagram_id || undefined);
    } catch (error) {
      note.textContent = 'The diagram could not be drawn: ' + error.message;
      return null;
    }
    viewer.get('canvas').zoom('fit-viewport', 'auto');
    note.textContent = answer.generated ? 'Laid out here: the definition was deployed without a diagram.' : '';
    container.setAttribute('data-drawn', answer.generated ? 'generated' : 'deployed');
    return { mark: overlay(viewer) };
  }

  // Completed path, tokens, incidents and multi-instance progress, drawn over the diagram.
  function overlay(viewer) {
    const canvas = viewer.get('canvas');
    const overlays = viewer.get('overlays');
    const registry = viewer.get('elementRegistry');
    let marked = [];
    return (detail) => {
      for (const [id, marker] of marked) canvas.removeMarker(id, marker);
      marked = [];
      overlays.remove({ type: 'orch' });
      const mark = (id, marker) => {
        if (id && registry.get(id)) {
          canvas.addMarker(id, marker);
          marked.push([id, marker]);
        }
      };
      const badge = (id, position, marker, text, title) => {
        if (id && registry.get(id)) {
          overlays.add(id, 'orch', { position, html: h('div', { class: 'orch-badge ' + marker, title }, text) });
        }
      };
      const tokens = new Map();
      for (const scope of detail.scopes) {
        for (const token of scope.tokens) tokens.set(token.node_id, (tokens.get(token.node_id) || 0) + 1);
      }
      const failing = new Map();
      for (const incident of detail.incidents) {
        if (!incident.resolved_at && incident.node_id) failing.set(incident.node_id, incident.message || incident.kind);
      }
      const done = new Set();
      for (const entry of detail.history) {
        if (entry.node_id) done.add(entry.node_id);
        const d = entry.detail || {};
        if (typeof d.flow === 'string') done.add(d.flow);
        if (Array.isArray(d.flows)) for (const flow of d.flows) done.add(flow);
      }
      // Flows out of a gateway are in the history by id; any other flow was taken when
      // both of its ends were reached.
      const reached = (element) => done.has(element.id) || tokens.has(element.id);
      for (const flow of registry.filter((e) => e.type === 'bpmn:SequenceFlow')) {
        if (!/Gateway$/.test(flow.source.type) && reached(flow.source) && reached(flow.target)) done.add(flow.id);
      }
      for (const id of done) if (!tokens.has(id) && !failing.has(id)) mark(id, 'orch-done');
      for (const [id, count] of tokens) {
        mark(id, 'orch-active');
        badge(id, { top: -10, right: 10 }, 'tokens', String(count), count + ' token(s) here');
      }
      for (const [id, message] of failing) {
        mark(id, 'orch-incident');
        badge(id, { bottom: 10, left: -10 }, 'incident', '!', message);
      }
      for (const scope of detail.scopes) {
        if (scope.loop) {
          const { started, completed, elements } = scope.loop;
          badge(scope.node_id, { bottom: -8, right: 40 }, 'loop', completed + '/' + elements + ' ✓ · ' + started + ' started',
            started + ' started, ' + completed + ' of ' + elements + ' completed');
        }
      }
    };
  }

  // --- which page -------------------------------------------------------------------------

  function header() {
    const role = sessionStorage.getItem(ROLE);
    const logout = document.getElementById('logout');
    if (sessionStorage.getItem(TOKEN)) {
      document.getElementById('who').textContent = 'role: ' + (role || '?');
      logout.hidden = false;
      logout.addEventListener('click', () => {
        sessionStorage.removeItem(TOKEN);
        sessionStorage.removeItem(ROLE);
        location.assign('/ui/login');
      });
    }
  }

  async function route() {
    header();
    const path = location.pathname.replace(/\/+$/, '');
    const instance = /^\/ui\/instances\/([^/]+)$/.exec(path);
    if (path === '/ui/login') return loginPage();
    if (!sessionStorage.getItem(TOKEN)) return toLogin();
    if (path === '/ui/instances') return instancesPage();
    if (path === '/ui/incidents') return incidentsPage();
    if (instance) return instancePage(decodeURIComponent(instance[1]));
    fill(main, h('p', { class: 'error' }, 'No such page.'));
  }

  route().catch(failed);
})();
