// The public API as the page uses it: every call belongs to one user action (its trace), sends
// the shopper's token when there is one, and turns an error into a sentence a shopper can read.

import { session } from './session.js';

export class ApiError extends Error {
  constructor(status, problem, message) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

const SERVICE_NAMES = { catalog: 'product catalogue', cart: 'cart', orders: 'orders service', collector: 'trace collector' };

// The gateway names the backend that failed (`upstream`); a backend's own 503 does not, and
// then the route called says which service it was.
function serviceName(problem, service) {
  const upstream = problem && typeof problem.upstream === 'string' ? problem.upstream : service || '';
  return SERVICE_NAMES[upstream] ? `The ${SERVICE_NAMES[upstream]}` : 'The shop';
}

function retryAfter(headers) {
  const seconds = Number.parseInt(headers.get('retry-after') || '', 10);
  return Number.isFinite(seconds) && seconds > 0 ? seconds : 0;
}

function detailOf(problem) {
  if (!problem || typeof problem !== 'object') return '';
  const text = problem.detail || problem.message || '';
  return typeof text === 'string' ? text : '';
}

// What a shopper reads for an error answer: never the raw body.
export function describe(status, problem, headers, service) {
  const detail = detailOf(problem);
  const wait = retryAfter(headers);
  const later = wait ? `Please try again in ${wait} second${wait === 1 ? '' : 's'}.` : 'Please try again in a moment.';
  const type = problem && typeof problem.type === 'string' ? problem.type : '';
  switch (status) {
    case 400:
      return `That request was not accepted: ${detail || 'please check what you entered.'}`;
    case 401:
      return 'Please sign in to use your cart and see your orders.';
    case 403:
      return 'You are not allowed to do that.';
    case 404:
      return detail ? `Not found: ${detail}` : 'We could not find that.';
    case 409: {
      const only = /Only (\d+) available/i.exec(detail);
      if (only) {
        return only[1] === '0'
          ? 'Sorry, this product is out of stock.'
          : `Sorry, there is not enough stock: only ${only[1]} more available.`;
      }
      if (type.endsWith('/line-full')) return 'You already have as many of this item as one order allows.';
      if (/empty/i.test(detail)) return 'Your cart is empty: add a product before checking out.';
      if (type.endsWith('/in-progress')) return `Your previous request is still being processed. ${later}`;
      return detail ? `That could not be done: ${detail}` : 'That could not be done right now.';
    }
    case 412:
      return 'Your cart changed in another tab or window. We reloaded it: please check it and try again.';
    case 413:
      return 'That is more than the shop accepts at once.';
    case 422:
      return detail ? `That request was not accepted: ${detail}` : 'That request was not accepted.';
    case 429:
      return `You are going a little fast. ${later}`;
    case 502:
      return `${serviceName(problem, service)} answered with an error. ${later}`;
    case 503:
      return `${serviceName(problem, service)} is unavailable right now. ${later}`;
    case 504:
      return `${serviceName(problem, service)} did not answer in time. ${later}`;
    default:
      return status >= 500 ? `Something went wrong on our side. ${later}` : `The request failed (${status}).`;
  }
}

// A fresh Idempotency-Key (the gateway may then retry the write safely).
export function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

// One API call inside `action`. `route` names the call in its span (a template, not the path
// with ids), `options`: body, headers.
export async function call(action, method, path, route, options = {}) {
  const { span, traceparent } = action.call(method, route);
  const headers = { accept: 'application/json', traceparent, ...(options.headers || {}) };
  const token = session.token();
  if (token) headers.authorization = `Bearer ${token}`;
  let body;
  if (options.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'same-origin' });
  } catch (error) {
    action.endCall(span, 0, 'network error');
    throw new ApiError(0, null, 'We cannot reach the shop right now. Check your connection and try again.');
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  action.endCall(span, response.status);
  if (!response.ok) {
    throw new ApiError(response.status, data, describe(response.status, data, response.headers, options.service));
  }
  return { data, etag: response.headers.get('etag'), status: response.status };
}

// The API routes the page uses (docs/api.md), each with its span name.
const enc = encodeURIComponent;

export const api = {
  products: (action, { q, category, page, pageSize }) => {
    const query = new URLSearchParams();
    if (q) query.set('q', q);
    if (category) query.set('category', category);
    query.set('page', String(page || 1));
    query.set('page_size', String(pageSize || 12));
    return call(action, 'GET', `/catalog?${query}`, '/catalog', { service: 'catalog' });
  },
  product: (action, id) => call(action, 'GET', `/catalog/${enc(id)}`, '/catalog/{id}', { service: 'catalog' }),
  cart: (action, user) => call(action, 'GET', `/v1/cart/${enc(user)}`, '/v1/cart/{user_id}', { service: 'cart' }),
  addItem: (action, user, productId, quantity) => call(action, 'POST', `/v1/cart/${enc(user)}/items`,
    '/v1/cart/{user_id}/items', { service: 'cart', body: { product_id: productId, quantity }, headers: { 'idempotency-key': newKey() } }),
  setQuantity: (action, user, productId, quantity, version) => call(action, 'PATCH',
    `/v1/cart/${enc(user)}/items/${enc(productId)}`, '/v1/cart/{user_id}/items/{product_id}',
    { service: 'cart', body: { quantity }, headers: { 'if-match': `"v${version}"`, 'idempotency-key': newKey() } }),
  removeItem: (action, user, productId, version) => call(action, 'DELETE',
    `/v1/cart/${enc(user)}/items/${enc(productId)}`, '/v1/cart/{user_id}/items/{product_id}',
    { service: 'cart', headers: { 'if-match': `"v${version}"`, 'idempotency-key': newKey() } }),
  checkout: (action, user, shippingAddress, key) => call(action, 'POST', '/api/orders/checkout',
    '/api/orders/checkout', { service: 'orders', body: { user_id: user, shipping_address: shippingAddress }, headers: { 'idempotency-key': key } }),
  order: (action, id) => call(action, 'GET', `/api/orders/${enc(id)}`, '/api/orders/{id}', { service: 'orders' }),
  orders: (action, user, page, pageSize) => call(action, 'GET',
    `/api/users/${enc(user)}/orders?page=${page}&page_size=${pageSize}`, '/api/users/{user_id}/orders', { service: 'orders' }),
  devToken: (action, sub) => call(action, 'POST', '/dev/token', '/dev/token', { body: { sub } }),
};
