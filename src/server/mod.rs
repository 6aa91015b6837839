//! The network side of `chatd run`.

pub mod tls;
