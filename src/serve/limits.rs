//! Who may translate how much: API keys (`--api-keys FILE`) and request rates
//! (`--req-limit` per minute, per key or client address), as LibreTranslate limits them.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{bail, Context, Result};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The most requests per minute a limit may name (a larger number means no limit).
pub const MAX_REQ_LIMIT: u32 = 1_000_000;

/// The keys of an API key file: one key per line, optionally followed by its own
/// requests-per-minute limit (`KEY 120`); `#` starts a comment, blank lines are skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// Key → its own per-minute limit (`None`: the server's `--req-limit`).
    pub keys: HashMap<String, Option<u32>>,
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API key file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("API key file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let key = fields.next().expect("a non-empty line has a field");
            let limit = match fields.next() {
                None => None,
                Some(n) => match n.parse::<u32>() {
                    Ok(n) if (1..=MAX_REQ_LIMIT).contains(&n) => Some(n),
                    _ => bail!(
                        "line {}: request limit `{n}` is not a number from 1 to {MAX_REQ_LIMIT}",
                        i + 1
                    ),
                },
            };
            if fields.next().is_some() {
                bail!(
                    "line {}: expected `KEY` or `KEY REQUESTS_PER_MINUTE`",
                    i + 1
                );
            }
            if keys.insert(key.to_string(), limit).is_some() {
                bail!("line {}: key listed twice", i + 1);
            }
        }
        if keys.is_empty() {
            bail!("no keys (one key per line, optionally followed by its requests per minute)");
        }
        Ok(Self { keys })
    }
}

/// Why a request is refused before any work.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An API key that the server does not know (403).
    InvalidKey,
    /// Over the limit of requests per minute (429), with the limit.
    Slowdown(u32),
}

/// The request rates allowed: a default per-minute limit per client address or key, and
/// the keys' own limits.
pub struct Limits {
    api_keys: Option<ApiKeys>,
    default_limit: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    per_key: HashMap<String, (u32, DefaultDirectRateLimiter)>,
}

impl Limits {
    /// `req_limit` 0 means no default limit.
    pub fn new(api_keys: Option<ApiKeys>, req_limit: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("limits are at least 1"));
        let default_limit =
            (req_limit > 0).then(|| (req_limit, RateLimiter::keyed(quota(req_limit))));
        let per_key = api_keys
            .iter()
            .flat_map(|k| &k.keys)
            .filter_map(|(key, limit)| {
                limit.map(|n| (key.clone(), (n, RateLimiter::direct(quota(n)))))
            })
            .collect();
        Self {
            api_keys,
            default_limit,
            per_key,
        }
    }

    pub fn keys_enabled(&self) -> bool {
        self.api_keys.is_some()
    }

    /// Admits one request with `api_key` (empty: none) from `client` (its address).
    pub fn admit(&self, api_key: &str, client: &str) -> Result<(), Refusal> {
        let key = (!api_key.is_empty()).then_some(api_key);
        if let (Some(keys), Some(key)) = (&self.api_keys, key) {
            if !keys.keys.contains_key(key) {
                return Err(Refusal::InvalidKey);
            }
            if let Some((n, limiter)) = self.per_key.get(key) {
                return limiter.check().map_err(|_| Refusal::Slowdown(*n));
            }
        }
        let Some((n, limiter)) = &self.default_limit else {
            return Ok(());
        };
        // A known key has its own budget; everyone else shares one per address.
        let who = match key {
            Some(k) if self.api_keys.is_some() => format!("key:{k}"),
            _ => format!("addr:{client}"),
        };
        let result = limiter.check_key(&who).map_err(|_| Refusal::Slowdown(*n));
        // Forget clients whose budget is full again, so the table cannot grow forever.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_with_limits_and_comments() {
        let keys = ApiKeys::parse("# keys\nabc 2\n\nxyz  # no limit\n").unwrap();
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.keys["abc"], Some(2));
        assert_eq!(keys.keys["xyz"], None);
    }

    #[test]
    fn bad_key_files_name_the_line() {
        let e = ApiKeys::parse("abc\nxyz ten\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("`ten`"), "{e}");
        let e = ApiKeys::parse("abc 1 2\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = ApiKeys::parse("abc\nabc\n").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(ApiKeys::parse("# nothing\n").is_err());
    }

    #[test]
    fn limits_refuse_unknown_keys_and_fast_clients() {
        let keys = ApiKeys::parse("slow 1\nfree\n").unwrap();
        let limits = Limits::new(Some(keys), 2);
        assert_eq!(limits.admit("nope", "a"), Err(Refusal::InvalidKey));
        assert_eq!(limits.admit("slow", "a"), Ok(()));
        assert_eq!(limits.admit("slow", "a"), Err(Refusal::Slowdown(1)));
        // Without a key: two per minute per address.
        assert_eq!(limits.admit("", "b"), Ok(()));
        assert_eq!(limits.admit("", "b"), Ok(()));
        assert_eq!(limits.admit("", "b"), Err(Refusal::Slowdown(2)));
        assert_eq!(limits.admit("", "c"), Ok(()));
        // A key without its own limit has the default one, apart from its address.
        assert_eq!(limits.admit("free", "b"), Ok(()));
        let unlimited = Limits::new(None, 0);
        for _ in 0..100 {
            assert_eq!(unlimited.admit("any", "a"), Ok(()));
        }
    }
}
