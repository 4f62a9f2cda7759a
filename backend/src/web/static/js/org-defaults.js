// An organization's notification defaults, for its owners and admins: what members get until they
// choose for themselves.
import { api } from "./api.js";
import { ChoiceTable } from "./choices.js";
import { html, ListState, toast, useLoad } from "./ui.js";

const SOURCES = { organization: "set for the organization", default: "Herald's default" };

export function OrgDefaults({ org }) {
  const defaults = useLoad((signal) => api(`/orgs/${org.id}/notification-defaults`, { signal }), [org.id]);
  const save = async (type, channel, value) => {
    const saved = await api(`/orgs/${org.id}/notification-defaults`, {
      method: "PUT", body: { defaults: { [type]: { [channel]: value } } },
    });
    defaults.setData(() => saved);
    toast(value === null ? "Back to Herald's default" : "Organization default saved");
  };
  return html`<section aria-labelledby="defaults-title">
    <h2 id="defaults-title">Notification defaults</h2>
    <p class="hint">What members get until they choose otherwise in their preferences.</p>
    <${ListState} state=${defaults} label="the defaults">${defaults.data && html`<${ChoiceTable}
      catalogue=${defaults.data.catalogue} values=${defaults.data.defaults} sources=${SOURCES} own="organization" save=${save} />`}<//>
  </section>`;
}
