//! The chat domain: the rules of the contract on top of Socket.IO, split by
//! job. A connection's [`handshake`] admits it; what it sends is checked
//! and appended to the log ([`submit`]) or answered from the store
//! ([`requests`]); what the log settles is acked and fanned out in log
//! order ([`dispatch`], [`fanout`]). [`service::Chat`] holds what they share.

pub mod auth;
pub mod clock;
pub mod console;
pub mod dispatch;
pub mod drain;
pub mod fanout;
pub mod handler;
pub mod handshake;
pub mod message;
pub mod names;
pub mod rate;
pub mod requests;
pub mod room;
pub mod service;
pub mod submit;
pub mod typing;
pub mod validate;
