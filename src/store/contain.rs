//! Damage contained: redb decodes some of what it reads from the file with
//! `unwrap` and `unreachable!`, so a damaged page can panic the thread that
//! reads it. The store's entry points that run outside a task which
//! already isolates panics (opening the file, the applier's thread, the
//! offline commands) run their reads through [`contained`], which turns
//! such a panic into [`StoreError::Damaged`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::StoreError;

/// Runs `f`; a panic inside becomes [`StoreError::Damaged`] with `what`
/// the store was doing.
pub fn contained<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Unwind safety: a panic abandons the transaction it happened in; the
    // store's own state is in the file, not in what the closure captured.
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(StoreError::Damaged {
            what,
            reason: panic_message(&*panic),
        })
    })
}

/// What a panic carried, for messages and the log.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_owned(),
        (_, Some(message)) => message.clone(),
        _ => "no message".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let got = contained::<()>("reading rooms", || panic!("entered unreachable code"));
        match got {
            Err(StoreError::Damaged { what, reason }) => {
                assert_eq!(what, "reading rooms");
                assert_eq!(reason, "entered unreachable code");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(contained("x", || Ok(7)).unwrap(), 7);
    }
}
