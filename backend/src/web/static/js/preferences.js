// Your notification preferences (`#/preferences`): what you get for each event type and channel in
// the current organization, where each value comes from, and when your digest is sent.
import { useState } from "preact/hooks";
import { api } from "./api.js";
import { ChoiceTable } from "./choices.js";
import { html, ListState, toast, useLoad } from "./ui.js";

const SOURCES = { user: "your choice", organization: "organization default", default: "default" };
const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const ZONES = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
const HOURS = Array.from({ length: 24 }, (_, hour) => hour);

/** The saved schedule; one never saved (Herald's hourly, 9:00 UTC) starts from the browser's zone. */
function startingSchedule(digest) {
  const untouched = digest.frequency === "hourly" && digest.hour === 9 && digest.timezone === "UTC";
  return untouched ? { ...digest, timezone: BROWSER_ZONE } : digest;
}

function DigestForm({ digest, onSaved }) {
  const [schedule, setSchedule] = useState(() => startingSchedule(digest));
  const [busy, setBusy] = useState(false);
  const set = (field) => (event) => setSchedule({ ...schedule, [field]: field === "hour" ? Number(event.target.value) : event.target.value });
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    try {
      onSaved(await api("/me/preferences", { method: "PUT", body: { digest: schedule } }));
      toast("Digest schedule saved");
    } catch (error) {
      toast(error.message, "error");
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="digest-form" onSubmit=${submit}>
    <label>Send my digest<select value=${schedule.frequency} onChange=${set("frequency")}>
      <option value="hourly">every hour</option><option value="daily">once a day</option></select></label>
    ${schedule.frequency === "daily" && html`<label>At<select aria-label="Local hour" value=${schedule.hour} onChange=${set("hour")}>
      ${HOURS.map((hour) => html`<option value=${hour}>${String(hour).padStart(2, "0")}:00</option>`)}</select></label>`}
    <label>Time zone<input value=${schedule.timezone} onInput=${set("timezone")} list="time-zones" required maxlength="64" />
      <datalist id="time-zones">${ZONES.map((zone) => html`<option value=${zone} />`)}</datalist></label>
    <div class="actions"><button type="submit" class="primary" disabled=${busy}>Save the schedule</button></div>
  </form>`;
}

export function PreferencesPage({ org }) {
  const prefs = useLoad((signal) => api("/me/preferences", { signal }), []);
  const save = async (type, channel, value) => {
    const saved = await api("/me/preferences", { method: "PUT", body: { preferences: { [type]: { [channel]: value } } } });
    prefs.setData(() => saved);
    toast(value === null ? "Back to the default" : "Preference saved");
  };
  const here = prefs.data?.organizations.find((o) => o.org_id === org.id);
  return html`<main class="page preferences"><h1>Notification preferences</h1>
    <${ListState} state=${prefs} label="your preferences">${prefs.data && html`<section aria-labelledby="choices-title">
        <h2 id="choices-title">In ${org.name}</h2>
        <p class="hint">Your choices apply in all your organizations; where you have none, the organization's default does.</p>
        <${ChoiceTable} catalogue=${prefs.data.catalogue} values=${here?.preferences || {}} sources=${SOURCES} own="user" save=${save} />
      </section>
      <section aria-labelledby="digest-title">
        <h2 id="digest-title">Digest</h2>
        <p class="hint">Emails set to “in a digest” wait for it and come together.</p>
        <${DigestForm} digest=${prefs.data.digest} onSaved=${(saved) => prefs.setData(() => saved)} />
      </section>`}<//>
  </main>`;
}
