//! Chat rules shared by the server and the operator commands.

pub mod auth;
pub mod names;
