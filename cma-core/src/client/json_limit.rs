//! A bound on how much a JSON document may make the client build.
//!
//! The byte caps on responses (and on event-stream frames) bound what is read, not what decoding
//! it allocates: `[{},{},…]` costs three bytes per element on the wire and around a hundred once
//! decoded into `serde_json::Value`s, so a 64 MiB page could cost gigabytes. Before decoding, a
//! single linear pass counts the values and keys a document would create (every `{`, `[`, `,`
//! and `:` outside strings) and refuses documents above [`MAX_JSON_VALUES`]. Nesting depth is
//! already bounded by `serde_json` (128 levels).

/// The most values and keys (together) one response or one event may hold: well above what a
/// page of 1000 events carries, and at most around a hundred megabytes once decoded.
pub const MAX_JSON_VALUES: usize = 1_000_000;

/// Count the values and keys `bytes` would decode into, stopping once the count passes `limit`;
/// `Err(limit)` when it does. Not a validator: malformed documents are left to the decoder.
pub fn check_json_values(bytes: &[u8], limit: usize) -> Result<usize, usize> {
    let mut count = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' | b',' | b':' => {
                count += 1;
                if count > limit {
                    return Err(limit);
                }
            }
            _ => {}
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_outside_strings_is_counted() {
        assert_eq!(check_json_values(br#"{"a":[1,2,3]}"#, 100), Ok(5));
        // Brackets, commas and escaped quotes inside strings are text.
        assert_eq!(check_json_values(br#"{"a":"[,{:\"]"}"#, 100), Ok(2));
        assert_eq!(check_json_values(b"[{},{},{}]", 3), Err(3));
        assert_eq!(check_json_values(b"", 0), Ok(0));
    }
}
