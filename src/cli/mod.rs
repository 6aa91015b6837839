//! The operator commands of the `chatd` binary.

pub mod token;
