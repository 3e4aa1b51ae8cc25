//! The TOC's JSON, read as a stream: the top-level object and its `entries`, each entry
//! handed to a [`Sink`] as soon as it is parsed, so the JSON is never held whole.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::Error;

/// Extended attributes of one entry, at most.
pub(super) const MAX_XATTRS: usize = 128;

/// Where parsed entries go.
pub(super) trait Sink {
    /// Takes one entry; an error stops the parse.
    fn add(&mut self, e: &JsonEntry) -> crate::Result<()>;
    /// Keeps the error that stopped the parse (serde's own error says only "refused").
    fn refuse(&mut self, e: Error);
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct JsonEntry {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) size: u64,
    #[serde(rename = "modtime")]
    pub(super) mod_time: String,
    pub(super) link_name: String,
    pub(super) mode: i64,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) offset: u64,
    pub(super) inner_offset: u64,
    pub(super) dev_major: u32,
    pub(super) dev_minor: u32,
    #[serde(deserialize_with = "bounded_xattrs")]
    pub(super) xattrs: BTreeMap<String, String>,
    pub(super) digest: String,
    pub(super) chunk_offset: u64,
    pub(super) chunk_size: u64,
    pub(super) chunk_digest: String,
}

/// An entry's `xattrs`, refused past [`MAX_XATTRS`] of them (a map of a million empty pairs
/// is a few bytes of JSON each and a hundred of memory).
fn bounded_xattrs<'de, D: de::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of extended attributes")
        }

        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.len() >= MAX_XATTRS {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_XATTRS} extended attributes on one entry"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// The top-level object: `version` and `entries`, in any order, other keys ignored.
pub(super) struct TopSeed<'a, S> {
    pub(super) b: &'a mut S,
}

impl<'de, S: Sink> DeserializeSeed<'de> for TopSeed<'_, S> {
    type Value = Option<i64>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: Sink> Visitor<'de> for TopSeed<'_, S> {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a TOC object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut version = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "version" => version = Some(map.next_value::<i64>()?),
                "entries" => map.next_value_seed(EntriesSeed { b: self.b })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

/// The `entries` array, handed to the builder one entry at a time.
struct EntriesSeed<'a, S> {
    b: &'a mut S,
}

impl<'de, S: Sink> DeserializeSeed<'de> for EntriesSeed<'_, S> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: Sink> Visitor<'de> for EntriesSeed<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of TOC entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<JsonEntry>()? {
            if let Err(err) = self.b.add(&e) {
                self.b.refuse(err);
                return Err(de::Error::custom("refused"));
            }
        }
        Ok(())
    }
}
