//! chatd: a self-hosted chat backend that speaks Socket.IO v5 / Engine.IO v4
//! over TLS WebSockets and keeps every accepted message in an embedded redb
//! database.

pub mod admin;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod datadir;
pub mod duration;
pub mod engineio;
pub mod health;
pub mod log;
pub mod metrics;
pub mod presence;
pub mod refusal;
pub mod server;
pub mod socketio;
pub mod store;
pub mod web;
