//! Chat rules shared by the server and the operator commands.

pub mod auth;
pub mod console;
pub mod handler;
pub mod hub;
pub mod message;
pub mod names;
pub mod rate;
pub mod room;
pub mod validate;
