// Signing in and up, confirming an address, resetting a password: the account endpoints of /api/auth.
import { useState } from "preact/hooks";
import { api, auth } from "./api.js";
import { html } from "./ui.js";

/** A form that sends itself, says it is busy, and shows the API's answer or error. */
function AccountForm({ title, submitLabel, onSubmit, children, footer }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState(null);
  const submit = async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(event.target));
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      setNotice(await onSubmit(values));
    } catch (failure) {
      setError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<section class="account-form">
    <form class="card-form" onSubmit=${submit} aria-labelledby="account-title">
      <h2 id="account-title">${title}</h2>
      ${children}
      ${error && html`<p class="form-error" role="alert">${error}</p>`}
      ${notice && html`<p class="notice" role="status">${notice}</p>`}
      <button type="submit" class="primary" disabled=${busy}>${busy ? "Please wait…" : submitLabel}</button>
    </form>
    ${footer && html`<nav class="account-links">${footer}</nav>`}
  </section>`;
}

const AccountPage = ({ children }) => html`<main class="account"><h1 class="brand">Herald</h1>${children}</main>`;

const Field = ({ label, name, type = "text", autocomplete, value, minlength }) => html`<label>
  ${label}<input name=${name} type=${type} required autocomplete=${autocomplete} value=${value} minlength=${minlength} />
</label>`;

export function SignIn() {
  const signIn = async ({ email, password }) => {
    const { access_token: token } = await api("/auth/login", { method: "POST", body: { email, password } });
    auth.signIn(token);
    return null;
  };
  return html`<${AccountPage}><${AccountForm} title="Sign in" submitLabel="Sign in" onSubmit=${signIn} footer=${html`
      <a href="#/signup">Create an account</a> · <a href="#/reset">Forgot your password?</a> ·
      <a href="#/verify">Confirm your address</a>`}>
    <${Field} label="Email" name="email" type="email" autocomplete="username" />
    <${Field} label="Password" name="password" type="password" autocomplete="current-password" />
  <//><//>`;
}

export function SignUp() {
  const register = async (body) => (await api("/auth/register", { method: "POST", body })).detail;
  return html`<${AccountPage}><${AccountForm} title="Create an account" submitLabel="Sign up" onSubmit=${register}
      footer=${html`<a href="#/verify">I have a confirmation link</a> · <a href="#/signin">Sign in</a>`}>
    <${Field} label="Name" name="name" autocomplete="name" />
    <${Field} label="Email" name="email" type="email" autocomplete="email" />
    <${Field} label="Password (8 characters or more)" name="password" type="password" autocomplete="new-password" minlength="8" />
  <//><//>`;
}

/** The emailed link holds `token=`: paste the link or the code. */
const tokenOf = (text) => {
  const found = /[?&]token=([^&\s]+)/.exec(text);
  return found ? decodeURIComponent(found[1]) : text.trim();
};

export function Verify({ token }) {
  const confirm = async ({ code }) =>
    (await api("/auth/verify-email", { method: "POST", body: { token: tokenOf(code) } })).detail +
    ". You can sign in now.";
  const resend = async ({ email }) =>
    (await api("/auth/verify-email/resend", { method: "POST", body: { email } })).detail;
  return html`<${AccountPage}>
    <${AccountForm} title="Confirm your address" submitLabel="Confirm" onSubmit=${confirm}
        footer=${html`<a href="#/signin">Sign in</a>`}>
      <${Field} label="The link or code from the email" name="code" autocomplete="off" value=${token} />
    <//>
    <${AccountForm} title="No email?" submitLabel="Send a new link" onSubmit=${resend}>
      <${Field} label="Email" name="email" type="email" autocomplete="email" />
    <//>
  <//>`;
}

export function Reset() {
  const request = async ({ email }) =>
    (await api("/auth/password-reset", { method: "POST", body: { email } })).detail;
  const confirm = async ({ code, password }) =>
    (await api("/auth/password-reset/confirm", { method: "POST", body: { token: tokenOf(code), password } }))
      .detail + ". Sign in with the new password.";
  return html`<${AccountPage}>
    <${AccountForm} title="Reset your password" submitLabel="Email me a code" onSubmit=${request}
        footer=${html`<a href="#/signin">Sign in</a>`}>
      <${Field} label="Email" name="email" type="email" autocomplete="email" />
    <//>
    <${AccountForm} title="I have a code" submitLabel="Set the new password" onSubmit=${confirm}>
      <${Field} label="Code from the email" name="code" autocomplete="one-time-code" />
      <${Field} label="New password (8 characters or more)" name="password" type="password" autocomplete="new-password" minlength="8" />
    <//>
  <//>`;
}
