// Organizations: the switcher, a new organization, and the invitations waiting for this user.
import { useState } from "preact/hooks";
import { api } from "./api.js";
import { html, ListState, toast, useLoad, when } from "./ui.js";

export function OrgSwitcher({ orgs, current, onSwitch }) {
  return html`<label class="org-switch"><span class="visually-hidden">Organization</span>
    <select value=${current?.id} onChange=${(e) => onSwitch(Number(e.target.value))}>
      ${orgs.map((org) => html`<option value=${org.id}>${org.name}</option>`)}
    </select>
  </label>`;
}

export function Invitations({ onJoined }) {
  const invitations = useLoad((signal) => api("/invitations", { signal }), []);
  const answer = async (invitation, verb) => {
    try {
      await api(`/invitations/${invitation.id}/${verb}`, { method: "POST" });
      invitations.setData((list) => list.filter((i) => i.id !== invitation.id));
      toast(verb === "accept" ? `You joined ${invitation.org_name}` : `You declined ${invitation.org_name}`);
      if (verb === "accept") onJoined(invitation.org_id);
    } catch (error) {
      toast(error.message, "error");
    }
  };
  return html`<section aria-labelledby="invitations-title">
    <h2 id="invitations-title">Invitations</h2>
    <${ListState} state=${invitations} label="invitations" empty="No invitations are waiting for you.">
      <ul class="rows">${(invitations.data || []).map((i) => html`<li key=${i.id}>
        <span><strong>${i.org_name}</strong> as ${i.role}${i.invited_by ? `, from ${i.invited_by}` : ""}
          <small>until ${when(i.expires_at)}</small></span>
        <span class="actions">
          <button type="button" class="primary" onClick=${() => answer(i, "accept")}>Accept</button>
          <button type="button" onClick=${() => answer(i, "decline")}>Decline</button>
        </span></li>`)}</ul>
    <//>
  </section>`;
}

export function NewOrg({ onCreated }) {
  const [error, setError] = useState(null);
  const create = async (event) => {
    event.preventDefault();
    try {
      const org = await api("/orgs", { method: "POST", body: { name: new FormData(event.target).get("name") } });
      onCreated(org.id);
    } catch (failure) {
      setError(failure.message);
    }
  };
  return html`<section aria-labelledby="new-org-title">
    <h2 id="new-org-title">New organization</h2>
    <form class="inline-form" onSubmit=${create}>
      <label>Name<input name="name" required maxlength="200" /></label>
      <button type="submit" class="primary">Create</button>
    </form>
    ${error && html`<p class="form-error" role="alert">${error}</p>`}
  </section>`;
}

export function OrgsPage({ onJoined }) {
  return html`<main class="page"><h1>Organizations</h1>
    <${Invitations} onJoined=${onJoined} />
    <${NewOrg} onCreated=${onJoined} />
  </main>`;
}
