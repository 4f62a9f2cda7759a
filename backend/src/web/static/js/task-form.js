// Creating a task, in a modal dialog: title, description, assignee, watchers.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "./api.js";
import { html } from "./ui.js";

export function AssigneeSelect({ people, value }) {
  return html`<label>Assignee
    <select name="assignee_id">
      <option value="">Unassigned</option>
      ${people.list.map((user) => html`<option value=${user.id} selected=${user.id === value}>${user.name}</option>`)}
    </select>
  </label>`;
}

export function TaskForm({ org, people, onDone, onCancel }) {
  const dialog = useRef();
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    dialog.current.showModal();
  }, []);
  const submit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = {
      title: form.get("title"),
      description: form.get("description"),
      assignee_id: form.get("assignee_id") ? Number(form.get("assignee_id")) : null,
      watcher_ids: form.getAll("watcher_ids").map(Number),
    };
    setBusy(true);
    try {
      onDone(await api(`/orgs/${org.id}/tasks`, { method: "POST", body }));
    } catch (failure) {
      setError(failure.message);
      setBusy(false);
    }
  };
  return html`<dialog ref=${dialog} class="modal" aria-labelledby="new-task-title" onClose=${onCancel}>
    <form onSubmit=${submit}>
      <h2 id="new-task-title">New task</h2>
      <label>Title<input name="title" required maxlength="300" /></label>
      <label>Description<textarea name="description" rows="4" maxlength="20000"></textarea></label>
      <${AssigneeSelect} people=${people} />
      <fieldset><legend>Watchers</legend>
        ${people.list.map((user) => html`<label class="check"><input type="checkbox" name="watcher_ids" value=${user.id} /> ${user.name}</label>`)}
      </fieldset>
      ${error && html`<p class="form-error" role="alert">${error}</p>`}
      <div class="actions">
        <button type="button" onClick=${() => dialog.current.close()}>Cancel</button>
        <button type="submit" class="primary" disabled=${busy}>Create</button>
      </div>
    </form>
  </dialog>`;
}
