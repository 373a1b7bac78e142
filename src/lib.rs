//! paygate: a payment routing gateway.
//!
//! Merchants send every payment to one endpoint. A request passes the tower layers in
//! `layers` (request id, limits, authentication), reaches a handler in `api`, which asks
//! `routing::decide` for the rule and the order of its channels, calls them through
//! `upstream` (failing over only when a channel surely did not charge), and keeps the payment
//! and its attempts in `store`. `config` loads and checks routes.toml into an immutable
//! snapshot held by `gateway`; `server` owns the listeners; `sim` is the PSP simulator used by
//! the demo config, the tests and the benchmarks.

pub mod api;
pub mod audit;
pub mod config;
pub mod gateway;
pub mod layers;
pub mod limits;
pub mod metrics;
pub mod reconcile;
pub mod report;
pub mod risk;
pub mod routing;
pub mod server;
pub mod sim;
pub mod simulate;
pub mod store;
pub mod tls;
pub mod upstream;
