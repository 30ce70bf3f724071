//! The registry's key, `(namespace, function_id)`, owned ([`FunctionKey`]) or borrowed
//! ([`KeyView`]) so that maps keyed by it are probed without building a `String`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;

/// An owned `(namespace, function_id)` key.
// NOTE: a key of up to `INLINE` bytes (both parts together) is held in the key itself, so the
// registry's entry carries it and a probe compares it without reading another cache line; a
// longer one is one heap block holding both parts, with the split point beside it. `contains`
// over 65,536 random keys of a 1M-function registry (`fnmesh-microbench lookup --functions 1000000
// --op contains`, 24-byte keys "default" + "svc1234::fn123456"): 103-106 ns with every key on the
// heap, 89-100 ns inline (a plain hashbrown map's `get`, same session: 111-117 ns); memory per
// function 246 -> 230 bytes (no key block).
#[derive(Clone)]
pub struct FunctionKey(Repr);

/// Bytes of namespace and id together that a key holds without a heap block. 37 makes the key
/// 40 bytes: the benchmark's entry (`FunctionsRegistry<u64>`) is then 88 bytes, a 96-byte glibc
/// chunk, as with a 32-byte key; one more inline byte would make the chunk 112.
const INLINE: usize = 37;

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        split: u8,
        bytes: [u8; INLINE],
    },
    Heap {
        text: Box<str>,
        split: usize,
    },
}

impl FunctionKey {
    /// Builds a key (no validation).
    pub fn new(namespace: &str, function_id: &str) -> Self {
        let len = namespace.len() + function_id.len();
        if len <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..namespace.len()].copy_from_slice(namespace.as_bytes());
            bytes[namespace.len()..len].copy_from_slice(function_id.as_bytes());
            // Both fit in a u8: len <= INLINE < 256.
            return FunctionKey(Repr::Inline {
                len: len as u8,
                split: namespace.len() as u8,
                bytes,
            });
        }
        let mut text = String::with_capacity(len);
        text.push_str(namespace);
        text.push_str(function_id);
        FunctionKey(Repr::Heap {
            text: text.into_boxed_str(),
            split: namespace.len(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.parts().0
    }

    /// The function id.
    pub fn function_id(&self) -> &str {
        self.parts().1
    }

    /// True when this is the key `(namespace, function_id)`: a byte comparison, for probing.
    pub(crate) fn is(&self, namespace: &str, function_id: &str) -> bool {
        let (text, split) = self.raw();
        // Equal slices have equal lengths, so the split is compared too.
        text[..split] == *namespace.as_bytes() && text[split..] == *function_id.as_bytes()
    }

    fn raw(&self) -> (&[u8], usize) {
        match &self.0 {
            Repr::Inline { len, split, bytes } => {
                (&bytes[..usize::from(*len)], usize::from(*split))
            }
            Repr::Heap { text, split } => (text.as_bytes(), *split),
        }
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
        match &self.0 {
            Repr::Heap { text, split } => text.split_at_checked(*split).unwrap_or_default(),
            Repr::Inline { .. } => {
                // The bytes were copied from two `str`s and the split lies between them, so
                // neither step fails; the empty pair only keeps this free of panics.
                let (text, split) = self.raw();
                std::str::from_utf8(text)
                    .ok()
                    .and_then(|text| text.split_at_checked(split))
                    .unwrap_or_default()
            }
        }
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
        // The same bytes split at the same place are the same two parts (no UTF-8 check).
        self.raw() == other.raw()
    }
}

impl Eq for FunctionKey {}

impl<'a> Borrow<dyn KeyView + 'a> for FunctionKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    use super::*;

    fn inline(key: &FunctionKey) -> bool {
        matches!(key.0, Repr::Inline { .. })
    }

    #[test]
    fn short_keys_are_held_inline_and_long_ones_on_the_heap_with_the_same_parts() {
        let id_fits = "f".repeat(INLINE - "default".len());
        let id_spills = "f".repeat(INLINE - "default".len() + 1);
        let cases = [
            ("default", "users.create", true),
            ("default", id_fits.as_str(), true),
            ("default", id_spills.as_str(), false),
            ("", "x", true),
            ("ns", "", true),
            // Multi-byte text on both sides of the split, inline and not.
            ("équipe", "créer→ok", true),
            ("équipe", "créer→ok→encore-plus-long-que-ça", false),
        ];
        for (namespace, function_id, held_inline) in cases {
            let key = FunctionKey::new(namespace, function_id);
            assert_eq!(inline(&key), held_inline, "{namespace:?} {function_id:?}");
            assert_eq!(key.namespace(), namespace);
            assert_eq!(key.function_id(), function_id);
            assert_eq!(key.parts(), (namespace, function_id));
            assert!(key.is(namespace, function_id));
            let copy = key.clone();
            assert_eq!(copy.parts(), (namespace, function_id));
            assert!(copy == key && FunctionKey::new(namespace, function_id) == key);
        }
    }

    #[test]
    fn a_key_is_only_its_own_pair_not_another_split_of_the_same_text() {
        for (namespace, function_id) in [("ab", "c"), ("team", "x".repeat(60).as_str())] {
            let key = FunctionKey::new(namespace, function_id);
            let text = format!("{namespace}{function_id}");
            for split in 0..=text.len() {
                let (ns, id) = text.split_at(split);
                assert_eq!(key.is(ns, id), ns == namespace, "split at {split}");
                assert_eq!(
                    FunctionKey::new(ns, id) == key,
                    ns == namespace,
                    "split at {split}"
                );
            }
            assert!(!key.is(namespace, &function_id[1..]));
            assert!(!key.is(namespace, &format!("{function_id}x")));
            assert!(!key.is("other", function_id));
        }
    }

    #[test]
    fn an_owned_key_hashes_and_compares_like_its_borrowed_view() {
        let hasher = foldhash::fast::RandomState::default();
        let long = "y".repeat(50);
        let mut map: HashMap<FunctionKey, u32, _> = HashMap::with_hasher(hasher.clone());
        map.insert(FunctionKey::new("default", "a"), 1);
        map.insert(FunctionKey::new("default", &long), 2);
        map.insert(FunctionKey::new("defaul", "ta"), 3);
        for (namespace, function_id, value) in [
            ("default", "a", 1),
            ("default", long.as_str(), 2),
            ("defaul", "ta", 3),
        ] {
            let view: &dyn KeyView = &(namespace, function_id);
            assert_eq!(map.get(view), Some(&value));
            assert_eq!(
                hasher.hash_one(FunctionKey::new(namespace, function_id)),
                hasher.hash_one(view)
            );
        }
        let missing: &dyn KeyView = &("default", "b");
        assert_eq!(map.get(missing), None);
    }
}
