//! chatd: a self-hosted chat backend that speaks Socket.IO v5 / Engine.IO v4
//! over TLS WebSockets and keeps every accepted message in an embedded redb
//! database.

pub mod store;
