//! `ClientConfig::from_env` honours `ANTHROPIC_BASE_URL`. Alone in its binary: it mutates the
//! process environment, which no other test may observe concurrently.

use cma_core::client::{BASE_URL_ENV, ClientConfig, DEFAULT_BASE_URL};

#[test]
fn base_url_comes_from_the_environment() {
    // SAFETY: this test binary runs this single test; no other thread reads the environment.
    unsafe { std::env::set_var(BASE_URL_ENV, "http://127.0.0.1:4010/") };
    let cfg = ClientConfig::builder_from_env().build().unwrap();
    assert_eq!(cfg.base_url(), "http://127.0.0.1:4010");
    assert_eq!(ClientConfig::from_env().base_url(), "http://127.0.0.1:4010");
    // SAFETY: as above.
    unsafe { std::env::set_var(BASE_URL_ENV, "not a url") };
    assert!(cma_core::client::Client::from_env().is_err());
    // SAFETY: as above.
    unsafe { std::env::set_var(BASE_URL_ENV, "") };
    assert_eq!(ClientConfig::from_env().base_url(), DEFAULT_BASE_URL);
    // SAFETY: as above.
    unsafe { std::env::remove_var(BASE_URL_ENV) };
    assert_eq!(ClientConfig::from_env().base_url(), DEFAULT_BASE_URL);
}
