//! The errors under an error, for the questions a fetch asks of a failure: was an address
//! blocked, was a certificate refused, and what to say.

/// `err` and every error under it. An `io::Error` that wraps one is followed into it:
/// `io::Error::source` skips the wrapped error (a rustls refusal sits there), giving its
/// source instead.
pub(super) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |err| {
        match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => err.source(),
        }
    })
}
