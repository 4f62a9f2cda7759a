// One task in a side panel: edit it, assign it, watch or mute it, and read its history (`/events`).
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "./api.js";
import { AssigneeSelect } from "./task-form.js";
import { html, ListState, STATUSES, statusLabel, toast, useEscape, useLoad, when } from "./ui.js";

function describeEvent(event, people) {
  const name = (id) => people.name(Number(id));
  switch (event.kind) {
    case "created": return "created the task";
    case "status_changed": return `moved it from ${statusLabel(event.old_value)} to ${statusLabel(event.new_value)}`;
    case "assignee_changed": return event.new_value ? `assigned it to ${name(event.new_value)}` : "unassigned it";
    case "title_changed": return `renamed it from “${event.old_value}” to “${event.new_value}”`;
    case "description_changed": return "edited the description";
    case "watcher_added": return `added ${name(event.new_value)} as a watcher`;
    case "watcher_removed": return `removed ${name(event.old_value)} from the watchers`;
    default: return event.kind;
  }
}

export function TaskDrawer({ taskId, me, people, onClose, onChanged }) {
  const task = useLoad((signal) => api(`/tasks/${taskId}`, { signal }), [taskId]);
  const history = useLoad((signal) => api(`/tasks/${taskId}/events`, { signal }), [taskId]);
  const [busy, setBusy] = useState(false);
  const heading = useRef();
  useEscape(onClose);
  useEffect(() => heading.current?.focus(), [taskId, task.data === undefined]);

  const change = async (request, message) => {
    setBusy(true);
    try {
      const saved = await request();
      task.setData(() => saved);
      onChanged(saved);
      history.reload();
      if (message) toast(message);
    } catch (error) {
      toast(error.message, "error");
    } finally {
      setBusy(false);
    }
  };
  const save = (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const patch = {
      title: form.get("title"),
      description: form.get("description"),
      status: form.get("status"),
      assignee_id: form.get("assignee_id") ? Number(form.get("assignee_id")) : null,
    };
    change(() => api(`/tasks/${taskId}`, { method: "PATCH", body: patch }), "Task saved");
  };
  const t = task.data;
  const watching = t?.watcher_ids.includes(me.id);
  const watch = () =>
    change(() => api(`/tasks/${taskId}/watchers/${me.id}`, { method: watching ? "DELETE" : "POST" }),
      watching ? "You no longer watch this task" : "You watch this task");
  const mute = () =>
    change(async () => {
      const { muted } = await api(`/tasks/${taskId}/mute`, { method: t.muted ? "DELETE" : "POST" });
      return { ...t, muted };
    }, t.muted ? "You hear about this task again" : "You hear nothing more about this task");

  // The edit form is not controlled (defaultValue), so a re-render, as when the history loads, keeps
  // what is being typed; it starts afresh from each saved version (key).
  return html`<aside class="drawer" aria-labelledby="drawer-title">
    <header class="drawer-head">
      <h2 id="drawer-title" tabindex="-1" ref=${heading}>${t ? `#${t.id} ${t.title}` : `Task #${taskId}`}</h2>
      <button type="button" class="icon" aria-label="Close the task" onClick=${onClose}>×</button>
    </header>
    ${task.error && html`<div class="state error" role="alert"><p>Could not load the task: ${task.error.message}</p>
      <button type="button" onClick=${task.reload}>Try again</button></div>`}
    ${!t && !task.error && html`<p class="state" role="status">Loading the task…</p>`}
    ${t && html`<div class="drawer-body">
      <p class="meta">Reported by ${people.name(t.reporter_id)} · ${when(t.created_at)}</p>
      <p class="meta">Watched by ${t.watcher_ids.length ? t.watcher_ids.map((id) => people.name(id)).join(", ") : "nobody"}
        <button type="button" class="small" onClick=${watch} disabled=${busy} aria-pressed=${watching}>${watching ? "Unwatch" : "Watch"}</button>
        <button type="button" class="small" onClick=${mute} disabled=${busy} aria-pressed=${t.muted}
          title="No email and no notification about this task, for you">${t.muted ? "Unmute" : "Mute"}</button></p>
      <form class="task-edit" onSubmit=${save} key=${t.updated_at}>
        <label>Title<input name="title" required maxlength="300" defaultValue=${t.title} /></label>
        <label>Status<select name="status">
          ${STATUSES.map(([s, label]) => html`<option value=${s} selected=${s === t.status}>${label}</option>`)}</select></label>
        <${AssigneeSelect} people=${people} value=${t.assignee_id} />
        <label>Description<textarea name="description" rows="5" maxlength="20000" defaultValue=${t.description}></textarea></label>
        <div class="actions"><button type="submit" class="primary" disabled=${busy}>Save</button></div>
      </form>
      <h3>History</h3>
      <${ListState} state=${history} label="the history" empty="No history yet.">
        <ol class="history">${(history.data || []).slice().reverse().map((e) => html`<li key=${e.id}>
          <strong>${people.name(e.actor_id)}</strong> ${describeEvent(e, people)} <time>${when(e.created_at)}</time></li>`)}</ol>
      <//>
    </div>`}
  </aside>`;
}
