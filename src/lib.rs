//! paygate: a payment routing gateway.
//!
//! Merchants send every payment to one endpoint. A request passes the tower layers in
//! `layers` (request id, metrics, deadline, size limits, load shedding, body, authentication,
//! rate limits from `limits`, idempotency), reaches a handler in `api`, which checks `risk`,
//! asks `routing::decide` for the rule and the order of its channels, calls them through
//! `upstream` (failing over only when a channel surely did not charge), and keeps the payment
//! and its attempts in `store` (the SQLite journal). `config` loads and checks routes.toml
//! into an immutable snapshot held by `gateway`, which also reloads it, drains channels
//! (`switches`, shared by every replica in cluster mode) and writes the `audit` trail;
//! `channel_limits` admits each call to a channel (its in-flight cap and contracted rate);
//! `cluster` is what replicas share through Redis; `metrics` exports it all; `reconcile`
//! settles pending payments; `psp_events` checks and parses the webhooks PSPs send; `server`
//! owns the listeners. `sim` is the PSP simulator, `simulate` replays routing on a virtual
//! clock, and `report` writes the daily operations report from the journal.

pub mod api;
pub mod audit;
pub mod channel_limits;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod layers;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod payload;
pub mod psp_events;
pub mod reconcile;
pub mod report;
pub mod risk;
pub mod routing;
pub mod server;
pub mod sim;
pub mod simulate;
pub mod store;
pub mod switches;
pub mod tls;
pub mod upstream;
