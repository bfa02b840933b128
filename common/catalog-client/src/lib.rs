//! What the cart and orders services ask the catalog: products, holds, commits and restocks, over the service kit's traced client, round-robin over the catalog's replicas.
//!
//! - [`upstream`]: [`Upstream`], one called service's replicas taken in turn, each call bounded
//!   by one timeout, and [`UpstreamError`], what a call that got no usable answer returns. The
//!   orders service's cart client is built on it too.
//! - [`catalog`]: [`CatalogClient`], the catalog's calls (a product's price, a cart's holds, an
//!   order's stock commit and restock, liveness) and their answers. Each service maps
//!   [`UpstreamError`] and the refusals to its own errors.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod upstream;

pub use catalog::{CatalogClient, CatalogProduct, CommitRefused, HoldRefused, HoldResponse, StockLine};
pub use upstream::{Upstream, UpstreamError};
