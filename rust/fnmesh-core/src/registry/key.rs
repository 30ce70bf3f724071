//! The registry's key, `(namespace, function_id)`, owned ([`FunctionKey`]) or borrowed
//! ([`KeyView`]) so that maps keyed by it are probed without building a `String`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;

/// An owned `(namespace, function_id)` key.
// NOTE: one allocation holding both strings, with the split point beside it (24 bytes inline
// instead of two `Box<str>`s' 32, and one heap block instead of two): part of cutting the
// registry from 815 to under 250 bytes per function (see `FunctionsRegistry`).
#[derive(Clone)]
pub struct FunctionKey {
    text: Box<str>,
    split: usize,
}

impl FunctionKey {
    /// Builds a key (no validation).
    pub fn new(namespace: &str, function_id: &str) -> Self {
        let mut text = String::with_capacity(namespace.len() + function_id.len());
        text.push_str(namespace);
        text.push_str(function_id);
        FunctionKey {
            text: text.into_boxed_str(),
            split: namespace.len(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.text[..self.split]
    }

    /// The function id.
    pub fn function_id(&self) -> &str {
        &self.text[self.split..]
    }
}

impl fmt::Debug for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionKey")
            .field("namespace", &self.namespace())
            .field("function_id", &self.function_id())
            .finish()
    }
}

/// A key seen as two borrowed strings, so that an owned [`FunctionKey`] in the map can be
/// found with a `(&str, &str)` pair without building a `String`.
pub(crate) trait KeyView {
    fn parts(&self) -> (&str, &str);
}

impl KeyView for FunctionKey {
    fn parts(&self) -> (&str, &str) {
        self.text.split_at(self.split)
    }
}

impl KeyView for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl Hash for dyn KeyView + '_ {
    fn hash<S: std::hash::Hasher>(&self, state: &mut S) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyView + '_ {}

// The owned key must hash exactly like its borrowed view.
impl Hash for FunctionKey {
    fn hash<S: std::hash::Hasher>(&self, state: &mut S) {
        self.parts().hash(state);
    }
}

impl PartialEq for FunctionKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for FunctionKey {}

impl<'a> Borrow<dyn KeyView + 'a> for FunctionKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}
