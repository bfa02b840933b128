// Small DOM helpers: elements are built with `h`, never from HTML strings, so product names and
// addresses can hold any text without becoming markup (and the CSP needs no exceptions).

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === 'class') element.className = value;
    else if (name.startsWith('on') && typeof value === 'function') element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// Exact cents from a two-decimal JSON number.
export function cents(amount) {
  return Math.round(Number(amount) * 100);
}

export function money(centsValue, currency = 'USD') {
  try {
    return new Intl.NumberFormat('en-US', { style: 'currency', currency }).format(centsValue / 100);
  } catch {
    return `${(centsValue / 100).toFixed(2)} ${currency}`;
  }
}

const PICTURES = ['electronics', 'home', 'apparel'];

// The picture of a product: its department's drawing (the catalogue has no photos).
export function picture(product, size = 'small') {
  const department = (product.categories || []).find((category) => PICTURES.includes(category));
  return h('img', {
    src: `/storefront/${department || 'product'}.svg`,
    alt: product.name,
    width: size === 'small' ? 160 : 320,
    height: size === 'small' ? 120 : 240,
    class: `picture ${size}`,
  });
}

export function stockText(stock) {
  if (stock <= 0) return 'Out of stock';
  if (stock < 10) return `Only ${stock} left in stock`;
  return `${stock} in stock`;
}

// "Previous / Page x of y / Next" links for a list answer's `pagination` (shown whenever the
// list has anything, so where the shopper is stays visible on a one-page list too).
export function pager(pagination, hrefFor) {
  const page = pagination.page || 1;
  const pages = Math.max(pagination.total_pages || 1, 1);
  if (!pagination.total) return null;
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    page > 1 ? h('a', { href: hrefFor(page - 1), rel: 'prev' }, 'Previous') : h('span', { class: 'muted' }, 'Previous'),
    h('span', { 'aria-current': 'page' }, `Page ${page} of ${pages}`),
    page < pages ? h('a', { href: hrefFor(page + 1), rel: 'next' }, 'Next') : h('span', { class: 'muted' }, 'Next'));
}

// A message area of a view; `show` fills it (role=alert: screen readers read it out).
export function notice() {
  const element = h('div', { class: 'notice', role: 'alert', hidden: true });
  element.show = (text, kind = 'error') => {
    element.textContent = text;
    element.className = `notice ${kind}`;
    element.hidden = !text;
  };
  return element;
}

export function heading(text) {
  return h('h1', { tabindex: '-1' }, text);
}

export function dateText(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'short' });
}
