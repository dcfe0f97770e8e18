//! Host parsing and pattern matching edge cases (table-driven).

use super::*;

fn name(s: &str) -> Host {
    Host::Name(s.into())
}

fn ip(s: &str) -> Host {
    Host::Ip(s.parse().unwrap())
}

#[test]
fn hosts_normalise_or_are_refused() {
    let cases: &[(&str, Option<Host>)] = &[
        ("example.com", Some(name("example.com"))),
        ("EXAMPLE.Com", Some(name("example.com"))),
        ("example.com.", Some(name("example.com"))),
        ("example.com..", None),
        (".example.com", None),
        ("a..b", None),
        ("bücher.de", Some(name("xn--bcher-kva.de"))),
        ("BÜCHER.de", Some(name("xn--bcher-kva.de"))),
        ("xn--bcher-kva.de", Some(name("xn--bcher-kva.de"))),
        ("under_score.example", Some(name("under_score.example"))),
        ("127.0.0.1", Some(ip("127.0.0.1"))),
        ("127.0.0.1.", Some(ip("127.0.0.1"))),
        ("[::1]", Some(ip("::1"))),
        ("::1", Some(ip("::1"))),
        ("[::ffff:127.0.0.1]", Some(ip("127.0.0.1"))),
        ("[::FFFF:7f00:1]", Some(ip("127.0.0.1"))),
        ("[fe80::1%25eth0]", None),
        ("fe80::1%eth0", None),
        ("[::1", None),
        // Numeric forms a resolver would read as an address: refused, never a name.
        ("2130706433", None),
        ("0177.0.0.1", None),
        ("0x7f.0.0.1", None),
        ("0x7f000001", None),
        ("127.1", None),
        ("127.0.0.01", None),
        ("1.2.3.4.5", None),
        ("example.0x1", None),
        ("example.123", None),
        // Full-width digits and dots map to ASCII under IDNA: still refused as ambiguous.
        ("１２７.０.０.１", Some(ip("127.0.0.1"))),
        ("１２７．１", None),
        ("0x.example", Some(name("0x.example"))),
        ("1e100.net", Some(name("1e100.net"))),
        ("", None),
        ("exa mple.com", None),
        ("evil.com/x", None),
        ("evil.com@good.com", None),
        ("%65xample.com", None),
        ("a\\b.com", None),
        ("a\u{0}b.com", None),
    ];
    for (input, want) in cases {
        let got = Host::parse(input).ok();
        assert_eq!(&got, want, "Host::parse({input:?})");
    }
}

#[test]
fn over_long_names_are_refused() {
    let label = "a".repeat(64);
    assert!(Host::parse(&format!("{label}.com")).is_err());
    let long = ["abcdefghi"; 26].join(".");
    assert!(long.len() > MAX_NAME_LEN);
    assert!(Host::parse(&long).is_err());
}

#[test]
fn authorities_split_ports_and_brackets() {
    type Case = (&'static str, Option<(Host, Option<u16>)>);
    let cases: &[Case] = &[
        ("example.com", Some((name("example.com"), None))),
        ("example.com:8443", Some((name("example.com"), Some(8443)))),
        ("[::1]:443", Some((ip("::1"), Some(443)))),
        ("[::1]", Some((ip("::1"), None))),
        ("::1:443", None),
        ("example.com:0", None),
        ("example.com:65536", None),
        ("example.com:+80", None),
        ("example.com:", None),
        ("[::1]x", None),
    ];
    for (input, want) in cases {
        assert_eq!(&parse_authority(input).ok(), want, "{input:?}");
    }
}

#[test]
fn patterns_match_as_documented() {
    use DefaultPorts::{All, Web};
    // (pattern, host, port, default ports, expected)
    let cases: &[(&str, &str, u16, DefaultPorts, bool)] = &[
        ("example.com", "example.com", 443, Web, true),
        ("example.com", "EXAMPLE.COM.", 443, Web, true),
        ("Example.COM.", "example.com", 80, Web, true),
        ("example.com", "www.example.com", 443, Web, false),
        ("example.com", "example.com", 22, Web, false),
        ("example.com", "example.com", 22, All, true),
        ("example.com:22", "example.com", 22, Web, true),
        ("example.com:22", "example.com", 443, All, false),
        ("example.com:*", "example.com", 5432, Web, true),
        ("*.example.com", "a.example.com", 443, Web, true),
        ("*.example.com", "a.b.example.com", 443, Web, true),
        ("*.example.com", "example.com", 443, Web, false),
        ("*.example.com", "evil-example.com", 443, Web, false),
        ("*.example.com", "example.com.evil.com", 443, Web, false),
        ("*.example.com", "xexample.com", 443, Web, false),
        ("*.example.com", "A.EXAMPLE.COM.", 443, Web, true),
        ("*.bücher.de", "shop.xn--bcher-kva.de", 443, Web, true),
        ("*.bücher.de", "shop.bucher.de", 443, Web, false),
        // Look-alike (Cyrillic 'е') is a different name.
        ("example.com", "ехаmple.com", 443, Web, false),
        ("*", "anything.example", 443, Web, true),
        ("*", "10.0.0.1", 80, Web, true),
        ("*", "10.0.0.1", 22, Web, false),
        ("*:*", "10.0.0.1", 22, Web, true),
        ("127.0.0.1", "127.0.0.1", 80, Web, true),
        ("127.0.0.1", "[::ffff:127.0.0.1]", 80, Web, true),
        ("127.0.0.1", "127.0.0.10", 80, Web, false),
        ("10.0.0.1", "10.0.0.10", 80, Web, false),
        ("[::1]", "::1", 443, Web, true),
        ("[::1]", "[0:0:0:0:0:0:0:1]", 443, Web, true),
        ("[::1]:8080", "[::1]", 8080, Web, true),
        ("[2001:db8::1]", "[2001:db8::10]", 443, Web, false),
        ("*.example.com", "10.0.0.1", 443, Web, false),
    ];
    for (pattern, host, port, default, want) in cases {
        let p = HostPatterns::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        let h = Host::parse(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(
            p.matches(&h, *port, *default),
            *want,
            "{pattern:?} vs {host:?}:{port} ({default:?})"
        );
    }
}

#[test]
fn comma_lists_and_normal_form() {
    let p = HostPatterns::parse(" PyPI.org , *.PythonHosted.org.,[::1]:8080,*:*").unwrap();
    assert_eq!(p.to_string(), "pypi.org,*.pythonhosted.org,[::1]:8080,*:*");
    assert_eq!(p.patterns().len(), 4);
    assert!(p.matches(&name("files.pythonhosted.org"), 443, DefaultPorts::Web));
    let p = HostPatterns::parse_all(["a.com,b.com", "c.com"]).unwrap();
    assert_eq!(p.to_string(), "a.com,b.com,c.com");
}

#[test]
fn bad_patterns_name_the_entry() {
    let cases = [
        ("", "[0]"),
        ("a.com,,b.com", "[1]"),
        ("a.com,foo.*.com", "[1]"),
        ("*example.com", "[0]"),
        ("a.com,::1", "[1]"),
        ("*.10.0.0.1", "[0]"),
        ("a.com:http", "[0]"),
        ("2130706433", "[0]"),
        ("a.com,b.com:99999", "[1]"),
    ];
    for (input, field) in cases {
        let e = HostPatterns::parse(input).expect_err(input);
        assert_eq!(e.kind(), EgressErrorKind::InvalidPolicy, "{input}: {e}");
        assert_eq!(e.field(), Some(field), "{input}: {e}");
    }
}
