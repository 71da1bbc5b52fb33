//! Bytes from the system's cryptographic generator, through aws-lc (which
//! rustls and the AWS SDK already build): token secrets, keys.

/// Fills `buf`; an error says the generator failed.
pub fn fill(buf: &mut [u8]) -> Result<(), String> {
    crate::proxy::provider()
        .secure_random
        .fill(buf)
        .map_err(|_| "the system's random generator failed".to_owned())
}
