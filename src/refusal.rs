//! The `reason` of a refused `chat message`, as the contract names them:
//! the chat domain gives them, the metrics count them.

/// Why a message was refused, as the `reason` clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No text, or only white space.
    Empty,
    /// Longer than the configured limit in UTF-8 bytes.
    TooLong,
    /// No `to` and no peer from the handshake.
    NoPeer,
    /// `to` is not a valid name, or is the sender.
    InvalidPeer,
    /// Over the sender's message rate.
    RateLimited,
    /// Any other shape: number, array, null, binary, missing `text`.
    BadPayload,
    /// The server could not store it now (shutting down, a failing disk, no
    /// quorum in a cluster); nothing was kept.
    Unavailable,
}

impl RefusalReason {
    /// Every reason, for reporting (the metrics list each one, even at 0).
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::Empty,
        RefusalReason::TooLong,
        RefusalReason::NoPeer,
        RefusalReason::InvalidPeer,
        RefusalReason::RateLimited,
        RefusalReason::BadPayload,
        RefusalReason::Unavailable,
    ];

    /// The `reason` string of the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Empty => "empty",
            RefusalReason::TooLong => "too_long",
            RefusalReason::NoPeer => "no_peer",
            RefusalReason::InvalidPeer => "invalid_peer",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::BadPayload => "bad_payload",
            RefusalReason::Unavailable => "unavailable",
        }
    }
}
