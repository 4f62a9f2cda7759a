// Shared pieces: the html tag, data loading with its states, messages, dates.
import { h } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import htm from "htm";

export const html = htm.bind(h);

/** Load something from the API: {data, error, loading, reload, setData}. */
export function useLoad(load, deps) {
  const [state, setState] = useState({ data: undefined, error: null, loading: true });
  const [round, setRound] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    setState((old) => ({ ...old, error: null, loading: true }));
    load(controller.signal).then(
      (data) => setState({ data, error: null, loading: false }),
      (error) => error.name !== "AbortError" && setState({ data: undefined, error, loading: false }),
    );
    return () => controller.abort();
  }, [...deps, round]);
  const reload = useCallback(() => setRound((n) => n + 1), []);
  const setData = useCallback((update) => setState((old) => ({ ...old, data: update(old.data) })), []);
  return { ...state, reload, setData };
}

/** Something loaded's loading and error states, and a list's empty one; the children once there is something to show. */
export function ListState({ state, empty, children, label }) {
  if (state.error) {
    return html`<div class="state error" role="alert">
      <p>Could not load ${label}: ${state.error.message}</p>
      <button type="button" onClick=${state.reload}>Try again</button>
    </div>`;
  }
  if (state.data === undefined) return html`<p class="state" role="status">Loading ${label}…</p>`;
  const items = Array.isArray(state.data) ? state.data : state.data.items;
  if (items && !items.length) return html`<p class="state empty">${empty}</p>`;
  return children;
}

const toastListeners = new Set();

/** A message for everyone to see (and screen readers to hear): kind is "error" or "info". */
export function toast(text, kind = "info") {
  const message = { id: Math.random(), text, kind };
  toastListeners.forEach((listener) => listener(message));
}

export function Toasts() {
  const [messages, setMessages] = useState([]);
  useEffect(() => {
    const listener = (message) => {
      setMessages((old) => [...old, message]);
      setTimeout(() => setMessages((old) => old.filter((m) => m !== message)), 6000);
    };
    toastListeners.add(listener);
    return () => toastListeners.delete(listener);
  }, []);
  return html`<div class="toasts" role="status" aria-live="polite">
    ${messages.map((m) => html`<p key=${m.id} class="toast ${m.kind}">${m.text}
      <button type="button" class="link" aria-label="Dismiss" onClick=${() => setMessages((old) => old.filter((x) => x !== m))}>×</button></p>`)}
  </div>`;
}

export function when(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export const STATUSES = [
  ["todo", "To do"],
  ["in_progress", "In progress"],
  ["in_review", "In review"],
  ["done", "Done"],
  ["cancelled", "Cancelled"],
];
export const statusLabel = (status) => (STATUSES.find(([s]) => s === status) || [status, status])[1];

/** Close on Escape: panels and menus. */
export function useEscape(onEscape) {
  useEffect(() => {
    const listener = (event) => event.key === "Escape" && onEscape(event);
    document.addEventListener("keydown", listener);
    return () => document.removeEventListener("keydown", listener);
  }, [onEscape]);
}
