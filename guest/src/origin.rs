//! The source of truth for profiles (`edge:cache/origin`), as a trait the
//! logic sees, and an in-memory origin for the native tests.

/// A failed origin operation, mirroring `edge:cache/origin.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginError {
    Unavailable(String),
    InvalidProfile(String),
}

/// `edge:cache/origin`: the source of truth for profiles.
pub trait Origin {
    fn fetch(&self, id: &str) -> Result<Option<String>, OriginError>;
    fn update(&self, id: &str, profile: &str) -> Result<bool, OriginError>;
}

#[cfg(test)]
pub mod memory {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemoryOrigin {
        pub profiles: RefCell<HashMap<String, String>>,
        pub reads: Cell<u32>,
        pub down: Cell<bool>,
    }

    impl MemoryOrigin {
        pub fn with(profiles: &[(&str, &str)]) -> Self {
            let origin = Self::default();
            for (id, json) in profiles {
                origin
                    .profiles
                    .borrow_mut()
                    .insert((*id).to_owned(), (*json).to_owned());
            }
            origin
        }
    }

    impl Origin for MemoryOrigin {
        fn fetch(&self, id: &str) -> Result<Option<String>, OriginError> {
            if self.down.get() {
                return Err(OriginError::Unavailable("origin is down".into()));
            }
            self.reads.set(self.reads.get() + 1);
            Ok(self.profiles.borrow().get(id).cloned())
        }

        fn update(&self, id: &str, profile: &str) -> Result<bool, OriginError> {
            if self.down.get() {
                return Err(OriginError::Unavailable("origin is down".into()));
            }
            Ok(self
                .profiles
                .borrow_mut()
                .insert(id.to_owned(), profile.to_owned())
                .is_none())
        }
    }
}
