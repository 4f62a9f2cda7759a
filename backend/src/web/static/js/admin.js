// Organization admin, for owners and admins: members and invitations, announcements, notification
// defaults, the outbox.
import { useState } from "preact/hooks";
import { api } from "./api.js";
import { OrgDefaults } from "./org-defaults.js";
import { html, ListState, toast, useLoad, when } from "./ui.js";

/** A small form whose fields become the JSON body of one POST. */
function PostForm({ path, submitLabel, done, children }) {
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const form = event.target;
    setBusy(true);
    try {
      done(await api(path, { method: "POST", body: Object.fromEntries(new FormData(form)) }));
      form.reset();
    } catch (error) {
      toast(error.message, "error");
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="inline-form" onSubmit=${submit}>${children}
    <button type="submit" class="primary" disabled=${busy}>${submitLabel}</button></form>`;
}

function Members({ org, me, onMembersChanged }) {
  const members = useLoad((signal) => api(`/orgs/${org.id}/members`, { signal }), [org.id]);
  const invitations = useLoad((signal) => api(`/orgs/${org.id}/invitations`, { signal }), [org.id]);
  const act = async (request, message, reload) => {
    try {
      await request();
      toast(message);
      reload();
    } catch (error) {
      toast(error.message, "error");
    }
  };
  const remove = (member) => act(() => api(`/orgs/${org.id}/members/${member.user.id}`, { method: "DELETE" }),
    `${member.user.name} was removed`, () => { members.reload(); onMembersChanged(); });
  const revoke = (invitation) => act(() => api(`/orgs/${org.id}/invitations/${invitation.id}`, { method: "DELETE" }),
    `The invitation of ${invitation.email} was revoked`, invitations.reload);
  return html`<section aria-labelledby="members-title">
    <h2 id="members-title">Members</h2>
    <${ListState} state=${members} label="members" empty="No members.">
      <ul class="rows">${(members.data || []).map((m) => html`<li key=${m.user.id}>
        <span><strong>${m.user.name}</strong> <small>${m.user.email}</small></span>
        <span class="actions"><span class="pill">${m.role}</span>
          ${m.role !== "owner" && m.user.id !== me.id && html`<button type="button" class="small"
            onClick=${() => remove(m)} aria-label="Remove ${m.user.name}">Remove</button>`}</span></li>`)}</ul>
    <//>
    <h3>Invite someone</h3>
    <${PostForm} path="/orgs/${org.id}/members" submitLabel="Invite" done=${(i) => { toast(`${i.email} was invited`); invitations.reload(); }}>
      <label>Email<input name="email" type="email" required /></label>
      <label>Role<select name="role"><option value="member">member</option><option value="admin">admin</option></select></label>
    <//>
    <h3>Invitations</h3>
    <${ListState} state=${invitations} label="invitations" empty="No invitations sent.">
      <ul class="rows">${(invitations.data || []).map((i) => html`<li key=${i.id}>
        <span><strong>${i.email}</strong> as ${i.role} <small>${when(i.created_at)}</small></span>
        <span class="actions"><span class="pill ${i.status}">${i.status}</span>
          ${i.status === "pending" && html`<button type="button" class="small" onClick=${() => revoke(i)}
            aria-label="Revoke the invitation of ${i.email}">Revoke</button>`}</span></li>`)}</ul>
    <//>
  </section>`;
}

function Announcements({ org }) {
  return html`<section aria-labelledby="announce-title">
    <h2 id="announce-title">Announcement</h2>
    <p class="hint">Every member gets it in their inbox at once.</p>
    <${PostForm} path="/orgs/${org.id}/announcements" submitLabel="Announce" done=${() => toast("Announcement sent")}>
      <label>Title<input name="title" required maxlength="300" /></label>
      <label>Message<textarea name="body" rows="3" maxlength="10000"></textarea></label>
    <//>
  </section>`;
}

const EMAIL_STATUSES = ["pending", "sending", "sent", "failed", "cancelled"];
const OUTBOX_PAGE = 50;

function Outbox({ org }) {
  const [status, setStatus] = useState("");
  const [shown, setShown] = useState(OUTBOX_PAGE);
  const emails = useLoad(
    (signal) => api(`/orgs/${org.id}/emails?limit=${shown}${status ? `&status=${status}` : ""}`, { signal }),
    [org.id, status, shown],
  );
  const change = async (email, action) => {
    try {
      const changed = await api(`/orgs/${org.id}/emails/${email.id}/${action}`, { method: "POST" });
      toast(action === "retry" ? `Email #${changed.id} will be sent again` : `Email #${changed.id} was cancelled`);
      emails.reload();
    } catch (error) {
      toast(error.message, "error");
    }
  };
  const counts = emails.data?.counts || {};
  return html`<section aria-labelledby="outbox-title">
    <h2 id="outbox-title">Outbox</h2>
    <div class="toolbar">
      <label>Status <select value=${status} onChange=${(e) => { setStatus(e.target.value); setShown(OUTBOX_PAGE); }}>
        <option value="">all</option>
        ${EMAIL_STATUSES.map((s) => html`<option value=${s}>${s}${counts[s] !== undefined ? ` (${counts[s]})` : ""}</option>`)}
      </select></label>
      <button type="button" onClick=${emails.reload}>Refresh</button>
    </div>
    <${ListState} state=${emails} label="the outbox" empty=${status ? `No ${status} emails.` : "No emails yet."}>
      <div class="table-wrap"><table class="outbox">
        <thead><tr><th>To</th><th>Subject</th><th>Status</th><th>Tries</th><th>Last error</th><th>Queued</th><th><span class="visually-hidden">Actions</span></th></tr></thead>
        <tbody>${(emails.data?.items || []).map((e) => html`<tr key=${e.id} data-email-id=${e.id}>
          <td>${e.to_email}</td><td>${e.subject}</td>
          <td><span class="pill ${e.status}">${e.status}</span></td>
          <td>${e.attempts}/${e.max_attempts}</td>
          <td class="error-text">${e.last_error || ""}</td>
          <td>${when(e.created_at)}</td>
          <td>${(e.status === "failed" || e.status === "cancelled") && html`<button type="button" class="small"
              onClick=${() => change(e, "retry")} aria-label="Retry email #${e.id}">Retry</button>`}
            ${e.status === "pending" && html`<button type="button" class="small"
              onClick=${() => change(e, "cancel")} aria-label="Cancel email #${e.id}">Cancel</button>`}</td>
        </tr>`)}</tbody>
      </table></div>
      ${emails.data?.items.length === shown && html`<button type="button" class="more" onClick=${() => setShown(shown + OUTBOX_PAGE)}>Load more</button>`}
    <//>
  </section>`;
}

export function AdminPage({ org, me, onMembersChanged }) {
  const [tab, setTab] = useState("members");
  const tabs = [["members", "Members"], ["announce", "Announcements"], ["defaults", "Notification defaults"], ["outbox", "Outbox"]];
  return html`<main class="page admin">
    <h1>${org.name}: admin</h1>
    <div class="tabs" role="tablist">
      ${tabs.map(([id, label]) => html`<button type="button" role="tab" id="tab-${id}" aria-selected=${tab === id}
        aria-controls="panel-${id}" onClick=${() => setTab(id)}>${label}</button>`)}
    </div>
    <div role="tabpanel" id="panel-${tab}" aria-labelledby="tab-${tab}">
      ${tab === "members" && html`<${Members} org=${org} me=${me} onMembersChanged=${onMembersChanged} />`}
      ${tab === "announce" && html`<${Announcements} org=${org} />`}
      ${tab === "defaults" && html`<${OrgDefaults} org=${org} />`}
      ${tab === "outbox" && html`<${Outbox} org=${org} />`}
    </div>
  </main>`;
}
