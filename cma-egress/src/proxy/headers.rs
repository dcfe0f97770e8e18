//! Header rules: hop-by-hop headers are dropped (RFC 9110 §7.6.1), `Proxy-*` headers never leave,
//! WebSocket upgrades are recognised, and `cma-secret:NAME` placeholders are found and filled.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::secrets::Secret;

/// The text that introduces a placeholder in a header value.
pub const PLACEHOLDER_PREFIX: &str = "cma-secret:";

/// Most placeholders one request may carry.
const MAX_PLACEHOLDERS: usize = 32;

/// Whether `headers` ask for a WebSocket upgrade (the only upgrade the proxy relays: other
/// protocols would turn an HTTP exchange into an unfiltered tunnel).
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    connection_upgrade && websocket
}

/// Drop hop-by-hop headers, headers the `Connection` header nominates, every `Proxy-*`
/// header and `Expect` (the proxy has already answered it). With `websocket`, the upgrade pair
/// is put back as `Connection: upgrade` + `Upgrade: websocket`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::EXPECT,
        HeaderName::from_static("keep-alive"),
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// The secret names placeholders in `headers` refer to, deduplicated, in order of appearance.
/// `Err` when a header holds more than [`MAX_PLACEHOLDERS`] or a placeholder has no name.
pub(crate) fn placeholder_names(headers: &HeaderMap) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for value in headers.values() {
        let bytes = value.as_bytes();
        let mut rest = bytes;
        while let Some(pos) = find(rest, PLACEHOLDER_PREFIX.as_bytes()) {
            let after = &rest[pos + PLACEHOLDER_PREFIX.len()..];
            let len = name_len(after);
            if len == 0 {
                return Err("a cma-secret: placeholder without a secret name".to_owned());
            }
            let name = String::from_utf8_lossy(&after[..len]).into_owned();
            if !names.contains(&name) {
                if names.len() == MAX_PLACEHOLDERS {
                    return Err(format!(
                        "more than {MAX_PLACEHOLDERS} distinct placeholders"
                    ));
                }
                names.push(name);
            }
            rest = &after[len..];
        }
    }
    Ok(names)
}

/// Replace every placeholder in `headers` using `lookup` (which knows every name
/// [`placeholder_names`] returned). Returns the names of the headers changed; each changed
/// value is marked sensitive (never indexed by HPACK).
pub(crate) fn fill_placeholders(
    headers: &mut HeaderMap,
    lookup: impl Fn(&str) -> Option<Secret>,
) -> Result<Vec<HeaderName>, String> {
    let mut changed = Vec::new();
    for (name, value) in headers.iter_mut() {
        let bytes = value.as_bytes();
        if find(bytes, PLACEHOLDER_PREFIX.as_bytes()).is_none() {
            continue;
        }
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(bytes.len() + 64));
        let mut rest = bytes;
        while let Some(pos) = find(rest, PLACEHOLDER_PREFIX.as_bytes()) {
            out.extend_from_slice(&rest[..pos]);
            let after = &rest[pos + PLACEHOLDER_PREFIX.len()..];
            let len = name_len(after);
            let secret_name = String::from_utf8_lossy(&after[..len]);
            let secret = lookup(&secret_name)
                .ok_or_else(|| format!("secret {secret_name} is unavailable"))?;
            out.extend_from_slice(secret.expose());
            rest = &after[len..];
        }
        out.extend_from_slice(rest);
        let mut new = HeaderValue::from_bytes(&out)
            .map_err(|_| format!("a secret in header {name} is not a valid header value"))?;
        new.set_sensitive(true);
        *value = new;
        changed.push(name.clone());
    }
    Ok(changed)
}

fn name_len(s: &[u8]) -> usize {
    s.iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        .count()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_proxy_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("authorization", "Bearer x"),
            ("accept", "*/*"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "authorization"]);
    }

    #[test]
    fn websocket_upgrades_are_recognised_and_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        h.insert("upgrade", HeaderValue::from_static("tcp"));
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn placeholders_are_found_and_filled() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer cma-secret:TOKEN"),
        );
        h.insert(
            "x-pair",
            HeaderValue::from_static("cma-secret:A:cma-secret:B;cma-secret:A"),
        );
        h.insert("x-plain", HeaderValue::from_static("cma-secretless"));
        assert_eq!(placeholder_names(&h).unwrap(), ["TOKEN", "A", "B"]);
        let changed = fill_placeholders(&mut h, |n| Some(Secret::new(format!("<{n}>")))).unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(h["authorization"], "Bearer <TOKEN>");
        assert_eq!(h["x-pair"], "<A>:<B>;<A>");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["x-plain"], "cma-secretless");

        let mut bad = HeaderMap::new();
        bad.insert("x", HeaderValue::from_static("cma-secret: oops"));
        assert!(placeholder_names(&bad).is_err());
        let mut nl = HeaderMap::new();
        nl.insert("x", HeaderValue::from_static("cma-secret:NL"));
        assert!(fill_placeholders(&mut nl, |_| Some(Secret::new("a\r\nb"))).is_err());
        assert!(fill_placeholders(&mut nl, |_| None).is_err());
    }
}
