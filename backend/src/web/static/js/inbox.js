// The notification bell and the inbox panel: newest first, mark read, read all, load more.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "./api.js";
import { html, toast, useEscape, when } from "./ui.js";

const PAGE = 20;

export function Bell({ count, open, onToggle, live }) {
  const label = `Notifications, ${count} unread${live === "live" ? "" : " (updating every few seconds)"}`;
  return html`<button type="button" class="bell" aria-label=${label} title=${label} aria-expanded=${open}
      aria-controls="inbox" onClick=${onToggle}>
    <svg aria-hidden="true" viewBox="0 0 24 24" width="20" height="20"><path fill="currentColor"
      d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5-6.71V3a2 2 0 1 0-4 0v1.29A7 7 0 0 0 5 11v5l-2 2v1h18v-1Z"/></svg>
    <span class="badge ${count ? "" : "zero"}" data-count=${count}>${count}</span>
  </button>`;
}

export function Inbox({ incoming, onClose, openTask }) {
  const [items, setItems] = useState([]);
  const [next, setNext] = useState(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState(null);
  const heading = useRef();
  useEscape(onClose);

  const load = async (before) => {
    setLoading(true);
    setError(null);
    try {
      const page = await api(`/notifications?limit=${PAGE}${before ? `&before=${before}` : ""}`);
      setItems((old) => (before ? [...old, ...page.items.filter((n) => !old.some((o) => o.id === n.id))] : page.items));
      setNext(page.next_before);
    } catch (failure) {
      setError(failure);
    } finally {
      setLoading(false);
    }
  };
  useEffect(() => {
    load(null);
    heading.current?.focus();
  }, []);
  useEffect(() => {
    if (incoming) setItems((old) => (old.some((n) => n.id === incoming.id) ? old : [incoming, ...old]));
  }, [incoming]);

  const markRead = async (notification) => {
    try {
      const read = await api(`/notifications/${notification.id}/read`, { method: "POST" });
      setItems((old) => old.map((n) => (n.id === read.id ? read : n)));
    } catch (failure) {
      toast(failure.message, "error");
    }
  };
  const readAll = async () => {
    try {
      await api("/notifications/read-all", { method: "POST" });
      const now = new Date().toISOString();
      setItems((old) => old.map((n) => ({ ...n, read_at: n.read_at || now })));
    } catch (failure) {
      toast(failure.message, "error");
    }
  };
  const open = (notification) => {
    if (!notification.read_at) markRead(notification);
    if (notification.data?.task_id) openTask(notification.data.task_id);
  };

  return html`<aside id="inbox" class="inbox" aria-labelledby="inbox-title">
    <header class="drawer-head">
      <h2 id="inbox-title" tabindex="-1" ref=${heading}>Inbox</h2>
      <button type="button" class="small" onClick=${readAll} disabled=${!items.some((n) => !n.read_at)}>Mark all read</button>
      <button type="button" class="icon" aria-label="Close the inbox" onClick=${onClose}>×</button>
    </header>
    ${items.length === 0 && !loading && !error && html`<p class="state empty">No notifications yet.</p>`}
    <ol class="notifications">
      ${items.map((n) => html`<li key=${n.id} class=${n.read_at ? "read" : "unread"} data-notification-id=${n.id}>
        <div class="note-text">
          ${n.data?.task_id
            ? html`<button type="button" class="link note-title" onClick=${() => open(n)}>${n.title}</button>`
            : html`<strong class="note-title">${n.title}</strong>`}
          ${n.body && html`<p>${n.body}</p>`}
          <time>${when(n.created_at)}</time>
        </div>
        ${!n.read_at && html`<button type="button" class="small" onClick=${() => markRead(n)}
          aria-label="Mark “${n.title}” read">Mark read</button>`}
      </li>`)}
    </ol>
    ${error && html`<div class="state error" role="alert"><p>Could not load notifications: ${error.message}</p>
      <button type="button" onClick=${() => load(items.length ? next : null)}>Try again</button></div>`}
    ${loading && html`<p class="state" role="status">Loading notifications…</p>`}
    ${next && !loading && html`<button type="button" class="more" onClick=${() => load(next)}>Load more</button>`}
  </aside>`;
}
