//! Quoting client input in error messages, so that every message arrives.
//!
//! grpc-core clients (Python, C++, C#) refuse status messages larger than about 16 KiB
//! ("metadata size exceeds hard limit"), so a message that repeated a 1 MB bad value would
//! reach them as RESOURCE_EXHAUSTED instead of the status the server meant. Every message
//! that echoes a value a client sent quotes it with [`quote`]: short values whole, long
//! ones as a short prefix and their length. [`cap_message`] is the last resort where a
//! message leaves the server.

use std::fmt;

/// Values up to this many bytes are quoted whole; longer ones by a prefix.
pub const QUOTE_WHOLE_MAX_BYTES: usize = 64;
/// Characters of a long value's prefix that a message repeats.
pub const QUOTE_PREFIX_CHARS: usize = 32;
/// Every status message stays shorter than this (bytes).
pub const MAX_STATUS_MESSAGE_BYTES: usize = 4096;

/// A client value as a message shows it: `"bar/1"`, or `"aaaa…" (20,000 bytes)`.
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

/// Quotes `value` for a message (see [`Quoted`]).
pub fn quote(value: &str) -> Quoted<'_> {
    Quoted(value)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= QUOTE_WHOLE_MAX_BYTES {
            return write!(f, "{:?}", self.0);
        }
        let prefix: String = self.0.chars().take(QUOTE_PREFIX_CHARS).collect();
        let quoted = format!("{prefix:?}");
        // `"abc"` -> `"abc…"`: the ellipsis inside the quotes says the value goes on.
        write!(
            f,
            "{}…\" ({} bytes)",
            &quoted[..quoted.len() - 1],
            thousands(self.0.len() as u64)
        )
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `20000` -> `20,000`: lengths and bounds in messages read at a glance.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Shortens a message to fewer than [`MAX_STATUS_MESSAGE_BYTES`] bytes (at a character
/// boundary, saying how long it was). Messages built with [`quote`] never need it; it
/// guards against one that was not.
pub fn cap_message(msg: String) -> String {
    if msg.len() < MAX_STATUS_MESSAGE_BYTES {
        return msg;
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES - 64;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (message of {} bytes shortened)",
        &msg[..end],
        thousands(msg.len() as u64)
    )
}

/// Refuses a value longer than `max` bytes: `ref name "aaaa…" (20,000 bytes) exceeds
/// 1,024 bytes`. `what` names the field.
pub fn check_len(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{what} {} exceeds {} bytes",
            quote(value),
            thousands(max as u64)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_whole_long_ones_by_prefix_and_length() {
        assert_eq!(quote("bar/1").to_string(), "\"bar/1\"");
        let long = "a".repeat(20_000);
        assert_eq!(
            quote(&long).to_string(),
            format!("\"{}…\" (20,000 bytes)", "a".repeat(QUOTE_PREFIX_CHARS))
        );
        // Multi-byte characters and escapes stay whole.
        let odd = "ä\n".repeat(1000);
        let q = quote(&odd).to_string();
        assert!(
            q.starts_with("\"ä\\nä\\n") && q.ends_with("…\" (3,000 bytes)"),
            "{q}"
        );
        assert_eq!(
            check_len("ref name", &long, 1024).unwrap_err(),
            format!(
                "ref name \"{}…\" (20,000 bytes) exceeds 1,024 bytes",
                "a".repeat(QUOTE_PREFIX_CHARS)
            )
        );
    }

    #[test]
    fn thousands_separators() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_048_576, "1,048,576"),
        ] {
            assert_eq!(thousands(n), s);
        }
    }

    #[test]
    fn cap_keeps_messages_short() {
        assert_eq!(cap_message("short".into()), "short");
        let capped = cap_message("é".repeat(100_000));
        assert!(capped.len() < MAX_STATUS_MESSAGE_BYTES, "{}", capped.len());
        assert!(capped.ends_with("(message of 200,000 bytes shortened)"));
    }
}
