// The one way the app talks to Herald: the public /api, with the signed-in user's bearer token.

const TOKEN_KEY = "herald.token";
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const auth = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    localStorage.setItem(TOKEN_KEY, token);
    listeners.forEach((listener) => listener(token));
  },
  signOut() {
    localStorage.removeItem(TOKEN_KEY);
    listeners.forEach((listener) => listener(null));
  },
  onChange(listener) {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};

/** FastAPI's `detail`: a sentence, or a list of field errors. */
function describe(detail, fallback) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => `${(item.loc || []).slice(1).join(".") || "request"}: ${item.msg}`).join("; ");
  }
  return fallback;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api${path}`, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Herald cannot be reached: check your connection and try again");
  }
  if (response.status === 401 && auth.token && !path.startsWith("/auth/")) auth.signOut();
  if (!response.ok) {
    let detail;
    try {
      detail = (await response.json()).detail;
    } catch {
      detail = undefined;
    }
    throw new ApiError(response.status, describe(detail, `Herald answered ${response.status}`));
  }
  return response.status === 204 ? null : response.json();
}
