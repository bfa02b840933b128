// The shopper: an id chosen on the first visit and kept in this browser, or, once signed in
// (edge auth on), the subject of the bearer token, which is whose cart the gateway lets in.

const SHOPPER_KEY = 'shopstack.shopper';
const TOKEN_KEY = 'shopstack.token';
// The id rule every service checks (docs/api.md#conventions).
const ID_PATTERN = /^(?!\.+$)[A-Za-z0-9._@:-]{1,128}$/;

const memory = new Map();
const store = {
  get(key) {
    try {
      return window.localStorage.getItem(key);
    } catch {
      return memory.get(key) ?? null;
    }
  },
  set(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch {
      memory.set(key, value);
    }
  },
  remove(key) {
    try {
      window.localStorage.removeItem(key);
    } catch {
      memory.delete(key);
    }
  },
};

function randomShopperId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return `shopper-${Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('')}`;
}

// The claims of a JWT, read without checking the signature (the gateway checks it).
function claims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const json = decodeURIComponent(Array.from(atob(padded), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
    const value = JSON.parse(json);
    return value && typeof value === 'object' ? value : null;
  } catch {
    return null;
  }
}

function usable(token) {
  const read = token ? claims(token) : null;
  if (!read || typeof read.sub !== 'string' || !ID_PATTERN.test(read.sub)) return null;
  if (typeof read.exp === 'number' && read.exp * 1000 <= Date.now()) return null;
  return read;
}

export const session = {
  // Whose cart and orders the page shows.
  shopper() {
    const signedIn = usable(store.get(TOKEN_KEY));
    if (signedIn) return signedIn.sub;
    let id = store.get(SHOPPER_KEY);
    if (!id || !ID_PATTERN.test(id)) {
      id = randomShopperId();
      store.set(SHOPPER_KEY, id);
    }
    return id;
  },
  // The bearer token, while it is unexpired.
  token() {
    const token = store.get(TOKEN_KEY);
    if (token && !usable(token)) {
      store.remove(TOKEN_KEY);
      return null;
    }
    return token;
  },
  // Keep `token` when it reads as a JWT naming a valid shopper id; the error says why not.
  signIn(token) {
    const trimmed = (token || '').trim().replace(/^Bearer\s+/i, '');
    const read = usable(trimmed);
    if (!read) {
      throw new Error('That is not a valid, unexpired token with a shopper id (sub).');
    }
    store.set(TOKEN_KEY, trimmed);
    return read.sub;
  },
  signOut() {
    store.remove(TOKEN_KEY);
  },
};
