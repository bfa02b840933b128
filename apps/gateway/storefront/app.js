// The storefront: a hash-routed page over the public API (docs/storefront.md).
//   #/?q=&category=&page=  products    #/product/{id}  one product    #/cart  the cart
//   #/checkout  checkout    #/order/{id}  an order (the confirmation)    #/orders?page=  your orders
//   #/sign-in  sign in with a token (edge auth on)

import { Action } from './trace.js';
import { ApiError, api, newKey } from './api.js';
import { session } from './session.js';
import { cents, dateText, h, heading, money, notice, pager, picture, stockText } from './views.js';

const settings = document.body.dataset;
const AUTH = settings.auth === 'true';
const DEV_TOKEN = settings.devToken === 'true';
const TRACES_URL = settings.traces === 'true' ? '/otlp/v1/traces' : null;
const PAGE_SIZE = 12;
const ORDERS_PAGE_SIZE = 10;

const main = document.getElementById('main');
const searchForm = document.getElementById('search-form');
const searchInput = document.getElementById('search');
const cartCount = document.getElementById('cart-count');

// One user action: one trace. `work` gets the action to pass to every API call.
async function act(name, work) {
  const action = new Action(name, TRACES_URL);
  try {
    const result = await work(action);
    action.end();
    return result;
  } catch (error) {
    action.end(error && error.message);
    throw error;
  }
}

// Run `work` with `button` disabled (and marked busy) until it is done.
async function busy(button, work) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

function messageOf(error) {
  return error instanceof ApiError ? error.message : `Something went wrong: ${error && error.message ? error.message : error}`;
}

function showCount(cart) {
  const units = (cart.items || []).reduce((sum, item) => sum + item.quantity, 0);
  cartCount.textContent = String(units);
  cartCount.setAttribute('aria-label', `${units} item${units === 1 ? '' : 's'} in your cart`);
  cartCount.hidden = units === 0;
}

// Names of the products this page has read, for order lines (an order keeps only ids).
const productNames = new Map();
function remember(products) {
  for (const product of products) productNames.set(product.id, product.name);
}

// Each navigation renders into `main`; a slower, older render never overwrites a newer one.
let renderCount = 0;
function show(...children) {
  // Views leave out what does not apply as null; replaceChildren would write it as text.
  main.replaceChildren(...children.filter((child) => child !== null && child !== undefined && child !== false));
  const title = main.querySelector('h1');
  if (title) {
    document.title = `${title.textContent} · ShopStack`;
  }
}

function parseRoute() {
  const hash = location.hash.startsWith('#/') ? location.hash.slice(1) : '/';
  const [path, query = ''] = hash.split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query) };
}

function href(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value !== undefined && value !== '' && value !== null));
  const text = query.toString();
  return `#${path}${text ? `?${text}` : ''}`;
}

async function render(focus) {
  const current = ++renderCount;
  const { parts, params } = parseRoute();
  const [view, id] = parts;
  const views = {
    product: () => productView(id),
    cart: () => cartView(),
    checkout: () => checkoutView(),
    order: () => orderView(id, params.get('placed') === '1'),
    orders: () => ordersView(Number.parseInt(params.get('page') || '1', 10) || 1),
    'sign-in': () => signInView(),
  };
  const build = views[view] || (() => productsView(params));
  try {
    const nodes = await build();
    if (current !== renderCount) return;
    show(...[nodes].flat());
  } catch (error) {
    if (current !== renderCount) return;
    const box = notice();
    box.show(messageOf(error));
    const next = error instanceof ApiError && error.status === 401 && AUTH
      ? h('p', {}, h('a', { href: '#/sign-in' }, 'Sign in'))
      : h('p', {}, h('button', { type: 'button', onclick: () => render(true) }, 'Try again'));
    show(heading('Sorry'), box, next);
  }
  if (focus) {
    const title = main.querySelector('h1');
    (title || main).focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Products

let departments = null;

async function loadDepartments(action) {
  if (departments) return departments;
  // The catalogue's first category of each product is its department.
  const found = new Set();
  for (let page = 1, pages = 1; page <= pages && page <= 10; page += 1) {
    const { data } = await api.products(action, { page, pageSize: 100 });
    for (const product of data.products) {
      if (product.categories && product.categories[0]) found.add(product.categories[0]);
    }
    pages = data.pagination.total_pages;
  }
  departments = [...found].sort();
  return departments;
}

function productCard(product) {
  const link = href(`/product/${encodeURIComponent(product.id)}`);
  return h('li', { class: 'card' },
    h('a', { href: link, class: 'card-link' }, picture(product), h('h2', {}, product.name)),
    h('p', { class: 'price' }, money(cents(product.price), product.currency)),
    h('p', { class: product.stock > 0 ? 'stock' : 'stock out' }, stockText(product.stock)));
}

async function productsView(params) {
  const q = (params.get('q') || '').trim();
  const category = params.get('category') || '';
  const page = Number.parseInt(params.get('page') || '1', 10) || 1;
  if (searchInput.value.trim() !== q && document.activeElement !== searchInput) searchInput.value = q;
  return act(q ? 'search products' : 'browse products', async (action) => {
    const [list, known] = await Promise.all([
      api.products(action, { q, category, page, pageSize: PAGE_SIZE }),
      loadDepartments(action),
    ]);
    const { products, pagination } = list.data;
    remember(products);
    const title = q ? `Results for “${q}”` : category ? category[0].toUpperCase() + category.slice(1) : 'Products';
    const chips = h('nav', { class: 'categories', 'aria-label': 'Categories' },
      h('a', { href: href('/', { q }), 'aria-current': category ? false : 'page' }, 'All'),
      known.map((name) => h('a', { href: href('/', { q, category: name }), 'aria-current': category === name ? 'page' : false },
        name[0].toUpperCase() + name.slice(1))));
    const body = products.length
      ? h('ul', { class: 'grid', 'aria-label': 'Products' }, products.map(productCard))
      : h('p', { class: 'empty' }, q ? `No products match “${q}”.` : 'No products here yet.');
    const count = h('p', { class: 'muted' }, `${pagination.total} product${pagination.total === 1 ? '' : 's'}`);
    return [heading(title), chips, count, body, pager(pagination, (to) => href('/', { q, category, page: to }))];
  });
}

// ---------------------------------------------------------------------------------------------
// One product

async function productView(id) {
  const { data: product } = await act('open product', (action) => api.product(action, id));
  remember([product]);
  const messages = notice();
  const stock = h('p', { class: product.stock > 0 ? 'stock' : 'stock out', id: 'product-stock' }, stockText(product.stock));
  const quantity = h('input', { type: 'number', id: 'quantity', name: 'quantity', min: 1, max: 100, value: 1, inputmode: 'numeric', required: true });
  const addButton = h('button', { type: 'submit', class: 'primary' }, 'Add to cart');
  const form = h('form', { class: 'add', 'aria-label': 'Add to cart' },
    h('label', { for: 'quantity' }, 'Quantity'), quantity, addButton);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const units = Number.parseInt(quantity.value, 10);
    if (!Number.isInteger(units) || units < 1) {
      messages.show('Choose a quantity of at least 1.');
      return;
    }
    busy(addButton, () => act('click Add to cart', async (action) => {
      messages.show('', 'info');
      try {
        const { data: cart } = await api.addItem(action, session.shopper(), product.id, units);
        showCount(cart);
        messages.show(`Added ${units} × ${product.name} to your cart.`, 'success');
      } catch (error) {
        messages.show(messageOf(error));
      }
      // The stock shown follows what the add did (or found).
      try {
        const { data: fresh } = await api.product(action, product.id);
        stock.textContent = stockText(fresh.stock);
        stock.className = fresh.stock > 0 ? 'stock' : 'stock out';
      } catch {
        // The message above already says what went wrong, if anything did.
      }
    }));
  });
  const categories = (product.categories || []).map((name) => h('li', {}, h('a', { href: href('/', { category: name }) }, name)));
  return h('article', { class: 'product' },
    picture(product, 'large'),
    h('div', { class: 'details' },
      heading(product.name),
      h('p', { class: 'price big' }, money(cents(product.price), product.currency)),
      stock,
      h('p', {}, product.description),
      form,
      messages,
      categories.length ? h('ul', { class: 'tags', 'aria-label': 'Categories' }, categories) : null,
      h('p', {}, h('a', { href: '#/' }, 'Back to all products'))));
}

// ---------------------------------------------------------------------------------------------
// The cart

// The cart with each line's product (name, price), read in one action.
async function loadCart(action) {
  const { data: cart } = await api.cart(action, session.shopper());
  showCount(cart);
  const products = await Promise.all(cart.items.map((item) => api.product(action, item.product_id)
    .then((answer) => answer.data)
    .catch(() => ({ id: item.product_id, name: item.product_id, price: 0, currency: 'USD', categories: [] }))));
  remember(products);
  const lines = cart.items.map((item, index) => ({ ...item, product: products[index] }));
  const total = lines.reduce((sum, line) => sum + cents(line.product.price) * line.quantity, 0);
  const currency = lines.length ? lines[0].product.currency : 'USD';
  return { cart, lines, total, currency };
}

async function cartView(loaded) {
  const state = loaded || await act('open cart', loadCart);
  const messages = notice();
  // Inside the click's action: the write and the cart read after it are one trace.
  const rerender = async (action, text, kind) => {
    const fresh = await loadCart(action);
    if (parseRoute().parts[0] !== 'cart') return;
    show(...await cartView(fresh));
    const box = main.querySelector('.notice');
    if (box && text) box.show(text, kind);
  };
  if (!state.lines.length) {
    return [heading('Cart'), messages, h('p', { class: 'empty' }, 'Your cart is empty.'), h('p', {}, h('a', { href: '#/' }, 'Browse products'))];
  }
  const items = state.lines.map((line) => {
    const inputId = `qty-${line.product_id}`;
    const input = h('input', { type: 'number', id: inputId, min: 1, max: 100, value: line.quantity, inputmode: 'numeric', required: true });
    const update = h('button', { type: 'submit' }, 'Update');
    const remove = h('button', { type: 'button', class: 'link-button' }, 'Remove');
    const form = h('form', { class: 'line-form' },
      h('label', { for: inputId }, `Quantity of ${line.product.name}`), input, update, remove);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const units = Number.parseInt(input.value, 10);
      if (!Number.isInteger(units) || units < 1) {
        messages.show('Choose a quantity of at least 1, or remove the line.');
        return;
      }
      busy(update, () => act('click Update', async (action) => {
        try {
          await api.setQuantity(action, session.shopper(), line.product_id, units, state.cart.version);
          await rerender(action, `${line.product.name}: quantity set to ${units}.`, 'success');
        } catch (error) {
          if (error instanceof ApiError && error.status === 412) await rerender(action, error.message);
          else messages.show(messageOf(error));
        }
      }));
    });
    remove.addEventListener('click', () => busy(remove, () => act('click Remove', async (action) => {
      try {
        await api.removeItem(action, session.shopper(), line.product_id, state.cart.version);
        await rerender(action, `${line.product.name} removed from your cart.`, 'success');
      } catch (error) {
        if (error instanceof ApiError && error.status === 412) await rerender(action, error.message);
        else messages.show(messageOf(error));
      }
    })));
    return h('li', { class: 'line' },
      picture(line.product),
      h('div', { class: 'line-body' },
        h('h2', {}, h('a', { href: href(`/product/${encodeURIComponent(line.product_id)}`) }, line.product.name)),
        h('p', { class: 'muted' }, `${money(cents(line.product.price), line.product.currency)} each · subtotal ${money(cents(line.product.price) * line.quantity, line.product.currency)}`),
        form));
  });
  const checkout = h('button', { type: 'button', class: 'primary', id: 'checkout' }, 'Checkout');
  checkout.addEventListener('click', () => {
    location.hash = '#/checkout';
  });
  return [heading('Cart'), messages,
    h('ul', { class: 'lines', 'aria-label': 'Cart lines' }, items),
    h('p', { class: 'total' }, 'Total: ', h('strong', { id: 'cart-total' }, money(state.total, state.currency))),
    h('p', { class: 'actions' }, checkout)];
}

// ---------------------------------------------------------------------------------------------
// Checkout and orders

async function checkoutView() {
  const state = await act('open checkout', loadCart);
  const messages = notice();
  if (!state.lines.length) {
    return [heading('Checkout'), h('p', { class: 'empty' }, 'Your cart is empty.'), h('p', {}, h('a', { href: '#/' }, 'Browse products'))];
  }
  // One key per checkout: a retried "Place order" (a timeout, a 503) can never order twice.
  let key = newKey();
  const address = h('input', { type: 'text', id: 'shipping-address', name: 'shipping_address', autocomplete: 'street-address', required: true, maxlength: 500 });
  address.addEventListener('input', () => {
    key = newKey();
  });
  const place = h('button', { type: 'submit', class: 'primary' }, 'Place order');
  const form = h('form', { class: 'checkout', 'aria-label': 'Checkout' },
    h('label', { for: 'shipping-address' }, 'Shipping address'), address, place);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!address.value.trim()) {
      messages.show('Please enter a shipping address.');
      address.focus();
      return;
    }
    busy(place, () => act('click Place order', async (action) => {
      try {
        const { data } = await api.checkout(action, session.shopper(), address.value.trim(), key);
        cartCount.hidden = true;
        placed.set(data.data.id, data.data);
        location.hash = href(`/order/${encodeURIComponent(data.data.id)}`, { placed: 1 });
      } catch (error) {
        if (!(error instanceof ApiError) || error.status === 0 || error.status >= 500 || error.status === 409) {
          // The order may have been placed: the same key gets its answer again.
        } else {
          key = newKey();
        }
        messages.show(messageOf(error));
      }
    }));
  });
  const summary = state.lines.map((line) => h('li', {}, `${line.quantity} × ${line.product.name}`));
  return [heading('Checkout'),
    h('ul', { class: 'summary', 'aria-label': 'Order summary' }, summary),
    h('p', { class: 'total' }, 'Total: ', h('strong', {}, money(state.total, state.currency))),
    form, messages];
}

function orderItems(order) {
  return h('ul', { class: 'summary', 'aria-label': 'Items' }, order.order_items.map((item) => {
    const name = productNames.get(item.product_id) || item.product_id;
    return h('li', {}, `${item.quantity} × ${name} at ${money(cents(item.unit_price), order.currency)}`);
  }));
}

// Orders just placed, shown on their confirmation without reading them again.
const placed = new Map();

async function orderView(id, justPlaced) {
  let order = justPlaced ? placed.get(id) : undefined;
  if (!order) {
    const { data } = await act('open order', (action) => api.order(action, id));
    order = data.data;
  }
  placed.delete(id);
  return [heading(justPlaced ? 'Thank you for your order' : 'Order'),
    justPlaced ? h('p', { class: 'notice success' }, 'Your order is placed.') : null,
    h('dl', { class: 'facts' },
      h('dt', {}, 'Order number'), h('dd', {}, h('code', { id: 'order-id', 'data-order-id': order.id }, order.id)),
      h('dt', {}, 'Status'), h('dd', { class: `status-${order.status}`, id: 'order-status' }, order.status),
      h('dt', {}, 'Total'), h('dd', {}, money(cents(order.total_amount), order.currency)),
      h('dt', {}, 'Shipping address'), h('dd', {}, order.shipping_address),
      h('dt', {}, 'Placed'), h('dd', {}, dateText(order.created_at))),
    orderItems(order),
    h('p', {}, h('a', { href: '#/orders' }, 'Your orders'), ' · ', h('a', { href: '#/' }, 'Continue shopping'))];
}

async function ordersView(page) {
  const { data } = await act('open your orders', (action) => api.orders(action, session.shopper(), page, ORDERS_PAGE_SIZE));
  const orders = data.data || [];
  const list = orders.length
    ? h('ul', { class: 'orders', 'aria-label': 'Orders' }, orders.map((order) => h('li', { class: 'order' },
      h('a', { href: href(`/order/${encodeURIComponent(order.id)}`) }, h('code', {}, order.id)),
      h('p', {}, h('span', { class: `status status-${order.status}` }, order.status), ' · ',
        money(cents(order.total_amount), order.currency), ' · ', dateText(order.created_at)))))
    : h('p', { class: 'empty' }, 'You have no orders yet.');
  return [heading('Your orders'), list, pager(data.pagination || {}, (to) => href('/orders', { page: to }))];
}

// ---------------------------------------------------------------------------------------------
// Signing in (edge auth on)

function signInView() {
  const messages = notice();
  const token = h('textarea', { id: 'token', rows: 4, spellcheck: 'false', autocomplete: 'off' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'sign-in', 'aria-label': 'Sign in' }, h('label', { for: 'token' }, 'Token'), token, submit);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    try {
      const sub = session.signIn(token.value);
      updateIdentity();
      messages.show(`Signed in as ${sub}.`, 'success');
    } catch (error) {
      messages.show(error.message);
    }
  });
  const parts = [heading('Sign in'),
    h('p', {}, 'This shop checks who you are: paste a bearer token issued for you (its subject is your shopper id).'),
    form, messages];
  if (DEV_TOKEN) {
    const mint = h('button', { type: 'button' }, 'Get a development token');
    mint.addEventListener('click', () => busy(mint, () => act('click Get a development token', async (action) => {
      try {
        const { data } = await api.devToken(action, session.shopper());
        session.signIn(data.token);
        updateIdentity();
        messages.show(`Signed in as ${data.sub} with a development token (valid ${Math.round(data.expires_in / 60)} minutes).`, 'success');
      } catch (error) {
        messages.show(messageOf(error));
      }
    })));
    parts.push(h('p', {}, 'Development only: ', mint));
  }
  if (session.token()) {
    const out = h('button', { type: 'button' }, 'Sign out');
    out.addEventListener('click', () => {
      session.signOut();
      updateIdentity();
      render(true);
    });
    parts.push(h('p', {}, out));
  }
  return parts;
}

function updateIdentity() {
  document.getElementById('shopper-id').textContent = session.shopper();
  const signIn = document.getElementById('nav-sign-in');
  signIn.hidden = !AUTH;
  signIn.textContent = session.token() ? 'Account' : 'Sign in';
}

// ---------------------------------------------------------------------------------------------
// Start

// Typing searches too, once the shopper pauses; Enter searches at once.
let typing = null;
searchForm.addEventListener('submit', (event) => {
  event.preventDefault();
  clearTimeout(typing);
  location.hash = href('/', { q: searchInput.value.trim() });
});
searchInput.addEventListener('input', () => {
  clearTimeout(typing);
  typing = setTimeout(() => {
    const q = searchInput.value.trim();
    const { parts, params } = parseRoute();
    if (parts.length === 0 && (params.get('q') || '') === q) return;
    history.replaceState(null, '', href('/', { q }));
    render(false);
  }, 500);
});

window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#/') || location.hash === '') render(true);
});

updateIdentity();
render(false);
if (!AUTH || session.token()) {
  act('read cart', (action) => api.cart(action, session.shopper()))
    .then(({ data }) => showCount(data))
    .catch(() => {});
}
