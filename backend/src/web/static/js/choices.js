// The table of event types and channels that both your preferences and an organization's defaults
// edit: each value, where it comes from, and a way back to the level below.
import { useState } from "preact/hooks";
import { html, toast } from "./ui.js";

const CHANNEL_LABELS = { email: "Email", in_app: "In the app" };
const VALUE_LABELS = { immediate: "at once", digest: "in a digest", off: "off", on: "on" };

/**
 * `catalogue`: the API's event types; `values`: type -> channel -> {value, source};
 * `sources`: source -> its words; `own`: the source this screen sets (its values can be reset);
 * `save(type, channel, value)`: a promise of the new values (value null: back to the default).
 */
export function ChoiceTable({ catalogue, values, sources, own, save }) {
  const [busy, setBusy] = useState(null);
  const tunable = catalogue.filter((kind) => Object.keys(kind.channels).length > 0);
  const fixed = catalogue.filter((kind) => Object.keys(kind.channels).length === 0);
  const change = async (type, channel, value) => {
    setBusy(`${type}.${channel}`);
    try {
      await save(type, channel, value);
    } catch (error) {
      toast(error.message, "error");
    } finally {
      setBusy(null);
    }
  };
  if (!tunable.length) return html`<p class="state empty">There is nothing to choose yet.</p>`;
  return html`<ul class="choices">
      ${tunable.map((kind) => html`<li key=${kind.type} data-event-type=${kind.type}>
        <div><strong>${kind.label}</strong><p class="hint">${kind.description}</p></div>
        ${Object.entries(kind.channels).map(([channel, options]) => {
          const current = values[kind.type]?.[channel] || { value: options[0], source: "default" };
          const name = `${kind.label}: ${CHANNEL_LABELS[channel] || channel}`;
          return html`<div class="choice" key=${channel} data-channel=${channel}>
            <label>${CHANNEL_LABELS[channel] || channel}
              <select aria-label=${name} value=${current.value} disabled=${busy === `${kind.type}.${channel}`}
                onChange=${(e) => change(kind.type, channel, e.target.value)}>
                ${options.map((option) => html`<option value=${option}>${VALUE_LABELS[option] || option}</option>`)}
              </select></label>
            <span class="source pill ${current.source}">${sources[current.source] || current.source}</span>
            ${current.source === own && html`<button type="button" class="small" aria-label="Reset ${name} to the default"
              onClick=${() => change(kind.type, channel, null)}>Reset</button>`}
          </div>`;
        })}
      </li>`)}
    </ul>
    ${fixed.length > 0 && html`<p class="hint">Always delivered: ${fixed.map((kind) => kind.label).join(", ")}.</p>`}`;
}
