// The board: one column per status; cards move by drag and drop, by the arrow keys, or by their menu.
// A move shows at once and the PATCH follows; if Herald refuses it, the card goes back with a message.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "./api.js";
import { html, ListState, STATUSES, statusLabel, toast, useLoad } from "./ui.js";
import { TaskForm } from "./task-form.js";

export function Board({ org, people, openTask, changedTask, liveTick }) {
  const tasks = useLoad((signal) => api(`/orgs/${org.id}/tasks?limit=200`, { signal }), [org.id, liveTick]);
  const [focusId, setFocusId] = useState(null);
  const [creating, setCreating] = useState(false);
  const boardRef = useRef();

  const replace = (task) =>
    tasks.setData((page) => page && { ...page, items: page.items.map((t) => (t.id === task.id ? task : t)) });
  useEffect(() => changedTask && replace(changedTask), [changedTask]);
  // A moved card is a new element in another column: focus it once it is there, then let focus be.
  useEffect(() => {
    const card = focusId !== null && boardRef.current?.querySelector(`[data-task-id="${focusId}"]`);
    if (card) {
      card.focus();
      setFocusId(null);
    }
  }, [focusId, tasks.data]);

  const move = async (task, status) => {
    if (task.status === status) return;
    replace({ ...task, status });
    setFocusId(task.id);
    try {
      replace(await api(`/tasks/${task.id}`, { method: "PATCH", body: { status } }));
    } catch (error) {
      replace(task);
      setFocusId(task.id);
      toast(`Could not move “${task.title}” to ${statusLabel(status)}: ${error.message}`, "error");
    }
  };
  const created = (task) => {
    setCreating(false);
    tasks.setData((page) => ({ ...page, items: [...page.items, task] }));
    setFocusId(task.id);
  };

  const items = tasks.data?.items || [];
  return html`<main class="board-page" ref=${boardRef}>
    <div class="toolbar">
      <h1>${org.name}</h1>
      <button type="button" class="primary" onClick=${() => setCreating(true)}>New task</button>
    </div>
    <p class="hint" id="move-hint">Drag a card to another column, or focus it and press ← or →; Enter opens it.</p>
    <${ListState} state=${tasks} label="tasks" empty="No tasks yet: create the first one with “New task”.">
      <div class="board">
        ${STATUSES.map(([status, label]) => html`<${Column} key=${status} status=${status} label=${label}
          tasks=${items.filter((t) => t.status === status)} people=${people} move=${move}
          byId=${(id) => items.find((t) => t.id === id)} openTask=${openTask} />`)}
      </div>
    <//>
    ${creating && html`<${TaskForm} org=${org} people=${people} onDone=${created} onCancel=${() => setCreating(false)} />`}
  </main>`;
}

function Column({ status, label, tasks, people, move, byId, openTask }) {
  const [over, setOver] = useState(false);
  const drop = (event) => {
    event.preventDefault();
    setOver(false);
    const task = byId(Number(event.dataTransfer.getData("text/plain")));
    if (task) move(task, status);
  };
  return html`<section class="column ${over ? "over" : ""}" data-status=${status} aria-labelledby="col-${status}"
      onDragOver=${(e) => { e.preventDefault(); setOver(true); }} onDragLeave=${() => setOver(false)} onDrop=${drop}>
    <h2 id="col-${status}">${label} <span class="count">${tasks.length}</span></h2>
    ${tasks.length
      ? html`<ol class="cards">${tasks.map((task) => html`<${Card} key=${task.id} task=${task} people=${people} move=${move} openTask=${openTask} />`)}</ol>`
      : html`<p class="state empty">Nothing ${label.toLowerCase()}</p>`}
  </section>`;
}

function Card({ task, people, move, openTask }) {
  const index = STATUSES.findIndex(([s]) => s === task.status);
  const keyDown = (event) => {
    if (event.target !== event.currentTarget) return;
    const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
    if (step && STATUSES[index + step]) {
      event.preventDefault();
      move(task, STATUSES[index + step][0]);
    } else if (event.key === "Enter") {
      openTask(task.id);
    }
  };
  const watchers = task.watcher_ids.map((id) => people.name(id));
  return html`<li class="card" tabindex="0" draggable="true" data-task-id=${task.id}
      aria-describedby="move-hint" aria-label="${task.title}, ${statusLabel(task.status)}"
      onKeyDown=${keyDown} onDragStart=${(e) => e.dataTransfer.setData("text/plain", String(task.id))}>
    <button type="button" class="card-title" onClick=${() => openTask(task.id)}>${task.title}</button>
    <p class="meta">${task.assignee_id ? html`<span class="avatar" aria-hidden="true">${people.initials(task.assignee_id)}</span>
      ${people.name(task.assignee_id)}` : html`<span class="muted">Unassigned</span>`}</p>
    ${watchers.length > 0 && html`<p class="meta watchers" title="Watchers">Watched by ${watchers.join(", ")}</p>`}
    <${MoveMenu} task=${task} move=${move} />
  </li>`;
}

function MoveMenu({ task, move }) {
  const [open, setOpen] = useState(false);
  const button = useRef();
  const menu = useRef();
  const targets = STATUSES.filter(([s]) => s !== task.status);
  useEffect(() => open && menu.current?.querySelector("button")?.focus(), [open]);
  const close = () => {
    setOpen(false);
    button.current?.focus();
  };
  const keyDown = (event) => {
    const items = [...menu.current.querySelectorAll("button")];
    const at = items.indexOf(document.activeElement);
    const next = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 }[event.key];
    if (next !== undefined) {
      event.preventDefault();
      items[(next + items.length) % items.length].focus();
    } else if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  };
  return html`<div class="move">
    <button type="button" class="small" ref=${button} aria-haspopup="menu" aria-expanded=${open}
        onClick=${() => setOpen(!open)} aria-label="Move “${task.title}”">Move ▾</button>
    ${open && html`<ul class="menu" role="menu" ref=${menu} onKeyDown=${keyDown}
        onFocusOut=${(e) => !menu.current?.contains(e.relatedTarget) && e.relatedTarget !== button.current && setOpen(false)}>
      ${targets.map(([status, label]) => html`<li role="none" key=${status}>
        <button type="button" role="menuitem" onClick=${() => { setOpen(false); move(task, status); }}>${label}</button></li>`)}
    </ul>`}
  </div>`;
}
