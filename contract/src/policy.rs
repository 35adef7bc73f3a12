//! Rate limit policies: what `RATE_LIMITS` rules produce and what the
//! limiters of the SDK enforce (`edge:cache/rate-limit`'s `policy`).

/// The default policy's limit: requests per window.
pub const DEFAULT_LIMIT: u32 = 60;

/// The default policy's window, in seconds.
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;

/// How requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// At most `limit` units per window aligned to the clock; one round trip.
    FixedWindow,
    /// The weighted two-window counter; two round trips.
    SlidingWindow,
    /// Token bucket semantics: `limit` per window as a steady rate, bursts of
    /// up to `burst` units (`None`: `limit`).
    Gcra { burst: Option<u32> },
}

/// What a check answers when the cache cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Let the request through: an outage of the cache must not become an
    /// outage of the function.
    #[default]
    Open,
    /// Refuse the request: for limits that protect something costly.
    Closed,
}

/// `limit` units of cost per `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Names the quota (at most 64 characters of `a-z 0-9 . _ -`); empty
    /// means `default`. Differently named policies count separately.
    pub name: String,
    /// How requests are counted.
    pub algorithm: Algorithm,
    /// Units of cost allowed per window; at least 1.
    pub limit: u32,
    /// The window length in seconds; at least 1.
    pub window_seconds: u32,
    /// What to answer when the cache is unavailable.
    pub fail_mode: FailMode,
}

impl Policy {
    /// The seeds' default: [`DEFAULT_LIMIT`] requests per
    /// [`DEFAULT_WINDOW_SECONDS`], fixed window, fail-open.
    pub fn seed_default() -> Self {
        Self {
            name: String::new(),
            algorithm: Algorithm::FixedWindow,
            limit: DEFAULT_LIMIT,
            window_seconds: DEFAULT_WINDOW_SECONDS,
            fail_mode: FailMode::Open,
        }
    }

    /// The name sent in `RateLimit` headers and used in keys.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() { "default" } else { &self.name }
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::from(self.window_seconds) * 1000
    }

    /// The most units one request may cost: the burst for GCRA, else the limit.
    pub fn capacity(&self) -> u32 {
        match self.algorithm {
            Algorithm::Gcra { burst: Some(burst) } => burst,
            _ => self.limit,
        }
    }
}
