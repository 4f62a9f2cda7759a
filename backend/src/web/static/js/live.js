// The live unread count and new notifications: Server-Sent Events authenticated by a stream token.
// EventSource resumes by itself with Last-Event-ID after a drop; when it gives up (an expired token,
// a refused connection) a new stream starts from the last event id seen (`?since=`). While no stream
// is open the count is polled, so the bell stays right even where streaming is impossible.
import { api } from "./api.js";

const POLL_MS = 5000;
const MAX_BACKOFF_MS = 15000;

export function connectLive({ onCount, onNotification, onState, onReset }) {
  let source = null;
  let lastEventId = null;
  let stopped = false;
  let failures = 0;
  let retryTimer = null;
  let pollTimer = null;

  const poll = async () => {
    try {
      onCount((await api("/notifications/unread-count")).count);
    } catch {
      // the next poll or the stream will tell
    }
  };
  const startPolling = () => {
    if (pollTimer || stopped) return;
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  };
  const stopPolling = () => {
    clearInterval(pollTimer);
    pollTimer = null;
  };
  const track = (event) => {
    if (event.lastEventId) lastEventId = event.lastEventId;
  };

  const retry = () => {
    if (stopped) return;
    source?.close();
    source = null;
    onState("polling");
    startPolling();
    const delay = Math.min(1000 * 2 ** failures, MAX_BACKOFF_MS);
    failures += 1;
    retryTimer = setTimeout(open, delay);
  };

  async function open() {
    if (stopped) return;
    if (!("EventSource" in window)) {
      onState("polling");
      startPolling();
      return;
    }
    let token;
    try {
      ({ token } = await api("/notifications/stream-token", { method: "POST" }));
    } catch {
      retry();
      return;
    }
    if (stopped) return;
    const query = new URLSearchParams({ token });
    if (lastEventId !== null) query.set("since", lastEventId);
    source = new EventSource(`/api/notifications/stream?${query}`);
    source.onopen = () => {
      failures = 0;
      stopPolling();
      onState("live");
    };
    source.addEventListener("unread_count", (event) => {
      track(event);
      onCount(JSON.parse(event.data).count);
    });
    source.addEventListener("notification", (event) => {
      track(event);
      onNotification(JSON.parse(event.data));
    });
    source.addEventListener("reset", () => {
      // Resumed from before what retention deleted: the stream goes on live, the rest is refetched.
      poll();
      onReset();
    });
    source.addEventListener("closed", () => {
      // A newer stream of this user replaced this one: do not fight it, poll instead.
      source.close();
      onState("polling");
      startPolling();
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) retry();
      else {
        onState("reconnecting"); // EventSource reconnects by itself, sending Last-Event-ID
        startPolling();
      }
    };
  }

  open();
  return () => {
    stopped = true;
    clearTimeout(retryTimer);
    stopPolling();
    source?.close();
  };
}
