// The app shell: who is signed in, which organization, the header with the bell, and the routes
// (`#/board`, `#/tasks/{id}`, `#/preferences`, `#/admin`, `#/orgs`; signed out: `#/signin`, `#/signup`, `#/verify`, `#/reset`).
import { render } from "preact";
import { useCallback, useEffect, useMemo, useState } from "preact/hooks";
import { api, auth } from "./api.js";
import { AdminPage } from "./admin.js";
import { Reset, SignIn, SignUp, Verify } from "./auth.js";
import { Board } from "./board.js";
import { TaskDrawer } from "./drawer.js";
import { Bell, Inbox } from "./inbox.js";
import { connectLive } from "./live.js";
import { OrgSwitcher, OrgsPage } from "./orgs.js";
import { PreferencesPage } from "./preferences.js";
import { html, Toasts, useLoad } from "./ui.js";

const ORG_KEY = "herald.org";

function useRoute() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const changed = () => setHash(location.hash);
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?");
  return { path, params: new URLSearchParams(query) };
}

const go = (path) => {
  location.hash = `#/${path}`;
};

/** Names of the organization's members, for cards, history and forms. */
function peopleOf(members) {
  const byId = new Map((members || []).map((m) => [m.user.id, m.user]));
  const name = (id) => byId.get(id)?.name ?? `User #${id}`;
  return {
    list: [...byId.values()],
    name,
    initials: (id) => name(id).split(/\s+/).map((word) => word[0]).join("").slice(0, 2).toUpperCase(),
  };
}

function Workspace({ route }) {
  const me = useLoad((signal) => api("/me", { signal }), []);
  const orgs = useLoad((signal) => api("/orgs", { signal }), []);
  const [orgId, setOrgId] = useState(Number(localStorage.getItem(ORG_KEY)) || null);
  const org = orgs.data?.find((o) => o.id === orgId) || orgs.data?.[0];
  const members = useLoad((signal) => (org ? api(`/orgs/${org.id}/members`, { signal }) : Promise.resolve([])), [org?.id]);
  const people = useMemo(() => peopleOf(members.data), [members.data]);
  const waiting = useLoad((signal) => api("/invitations", { signal }), [route.path]).data?.length;
  const [count, setCount] = useState(0);
  const [liveState, setLiveState] = useState("connecting");
  const [incoming, setIncoming] = useState(null);
  const [liveTick, setLiveTick] = useState(0);
  const [inboxRound, setInboxRound] = useState(0);
  const [inboxOpen, setInboxOpen] = useState(false);
  const [changedTask, setChangedTask] = useState(null);

  useEffect(() => connectLive({
    onCount: setCount,
    onState: setLiveState,
    onReset: () => {
      setInboxRound((n) => n + 1);
      setLiveTick((n) => n + 1);
    },
    onNotification: (notification) => {
      setIncoming(notification);
      if (notification.data?.task_id) setLiveTick((n) => n + 1);
    },
  }), []);
  const switchOrg = useCallback((id) => {
    localStorage.setItem(ORG_KEY, String(id));
    setOrgId(id);
  }, []);
  const joined = (id) => {
    orgs.reload();
    switchOrg(id);
    go("board");
  };
  const openTask = (id) => {
    setInboxOpen(false);
    go(`tasks/${id}`);
  };

  if (me.error || orgs.error) {
    const error = me.error || orgs.error;
    return html`<main class="account"><div class="state error" role="alert"><p>Could not load your account: ${error.message}</p>
      <button type="button" onClick=${() => { me.reload(); orgs.reload(); }}>Try again</button></div></main>`;
  }
  if (!me.data || !orgs.data) return html`<p class="boot" role="status">Loading Herald…</p>`;

  const manager = org && (org.role === "owner" || org.role === "admin");
  const taskId = /^tasks\/(\d+)$/.exec(route.path)?.[1];
  let page;
  if (!org || route.path === "orgs") page = html`<${OrgsPage} onJoined=${joined} />`;
  else if (route.path === "preferences") page = html`<${PreferencesPage} org=${org} />`;
  else if (route.path === "admin" && manager) {
    page = html`<${AdminPage} key=${org.id} org=${org} me=${me.data} onMembersChanged=${members.reload} />`;
  } else {
    page = html`<${Board} key=${org.id} org=${org} people=${people} openTask=${openTask}
      changedTask=${changedTask} liveTick=${liveTick} />`;
  }
  const current = (path) => (route.path === path ? "page" : undefined);

  return html`<div class="shell">
    <header class="topbar">
      <a class="brand" href="#/board">Herald</a>
      ${orgs.data.length > 0 && html`<${OrgSwitcher} orgs=${orgs.data} current=${org} onSwitch=${switchOrg} />`}
      <nav aria-label="Main">
        <a href="#/board" aria-current=${current("board") || (route.path === "" ? "page" : undefined)}>Board</a>
        <a href="#/preferences" aria-current=${current("preferences")}>Preferences</a>
        ${manager && html`<a href="#/admin" aria-current=${current("admin")}>Admin</a>`}
        <a href="#/orgs" aria-current=${current("orgs")}>Organizations${waiting ? html` <span class="pill">${waiting}</span>` : ""}</a>
      </nav>
      <span class="spacer"></span>
      <${Bell} count=${count} open=${inboxOpen} live=${liveState} onToggle=${() => setInboxOpen(!inboxOpen)} />
      <span class="me" title=${me.data.email}>${me.data.name}</span>
      <button type="button" class="small" onClick=${() => { auth.signOut(); go("signin"); }}>Sign out</button>
    </header>
    ${page}
    ${taskId && html`<${TaskDrawer} key=${taskId} taskId=${Number(taskId)} me=${me.data} people=${people}
      onClose=${() => go("board")} onChanged=${setChangedTask} />`}
    ${inboxOpen && html`<${Inbox} key=${inboxRound} incoming=${incoming} openTask=${openTask} onClose=${() => setInboxOpen(false)} />`}
  </div>`;
}

function App() {
  const [token, setToken] = useState(auth.token);
  useEffect(() => auth.onChange(setToken), []);
  const route = useRoute();
  const signedOutPage = ["signin", "signup", "verify", "reset"].includes(route.path);
  useEffect(() => {
    if (token && signedOutPage) go("board");
  }, [token, signedOutPage]);
  let view;
  if (token) {
    view = html`<${Workspace} route=${route} />`;
  } else if (route.path === "signup") view = html`<${SignUp} />`;
  else if (route.path === "verify") view = html`<${Verify} token=${route.params.get("token") || ""} />`;
  else if (route.path === "reset") view = html`<${Reset} />`;
  else view = html`<${SignIn} />`;
  return html`${view}<${Toasts} />`;
}

// An emailed link, `/tasks/{id}`, serves this page: show that task through the app's own route.
if (/^\/tasks\/\d+$/.test(location.pathname)) history.replaceState(null, "", `/#${location.pathname}`);
const root = document.getElementById("app");
root.textContent = ""; // the "Loading" placeholder
render(html`<${App} />`, root);
