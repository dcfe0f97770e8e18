//! The header of a file helper's reply, parsed into fixed types.
//!
//! The helper is not trusted (see the `files` module): its header is read into typed fields, not
//! a generic JSON tree, so what it costs in memory stays within a small multiple of its length
//! (a JSON object per array item would cost hundreds of bytes for a two-byte `{}`), and every
//! array is bounded in length as it is read. Fields a reply does not use are left at their
//! defaults; unknown ones are skipped without being kept.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};

/// Most per-path results one batch reply may hold (batches are far smaller).
pub(crate) const MAX_BATCH_RESULTS: usize = 4096;
/// Most items (files) one tree-search reply may hold.
pub(crate) const MAX_TREE_ITEMS: usize = 100_000;
/// Most entries one listing may hold.
const MAX_ENTRIES: usize = super::files::MAX_DIR_ENTRIES;
/// Most line matches one file's result may hold (a file of a single byte per line, within the
/// batch caps, stays below it).
pub(crate) const MAX_MATCHES: usize = 1 << 20;

/// A reply header: every field any operation uses, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Head {
    /// Bytes of data after the header.
    pub n: u64,
    /// Error kind: `os`, `notreg`, `big`, `bigdir`, `deep`, `timeout`, `later`, `other`.
    pub e: Option<String>,
    /// `os`: the errno.
    pub errno: i64,
    /// `os`/`other`: the message.
    pub msg: Option<String>,
    /// `read`: the file's size; `big`: the size found.
    pub size: Option<u64>,
    /// `big`/`bigdir`: the limit.
    pub max: Option<u64>,
    /// `stat`: the kind (`f`, `d`, `l`, anything else).
    pub k: Option<String>,
    /// `stat`: the size.
    pub s: u64,
    /// `stat`: the modification time in nanoseconds since the epoch.
    pub m: Option<i64>,
    /// `readlink`: the target.
    pub t: Option<String>,
    /// `readmany`: this file's data length.
    pub l: u64,
    /// `findmany`: the file is binary.
    pub b: Option<u64>,
    /// `findmany`: the lines holding the needle.
    #[serde(deserialize_with = "bounded::<_, MatchRow, MAX_MATCHES>")]
    pub ms: Option<Vec<MatchRow>>,
    /// `list`: the directory's entries.
    #[serde(deserialize_with = "bounded::<_, Entry, MAX_ENTRIES>")]
    pub entries: Option<Vec<Entry>>,
    /// Batches: one result per path sent.
    #[serde(deserialize_with = "bounded::<_, Head, MAX_BATCH_RESULTS>")]
    pub r: Option<Vec<Head>>,
    /// `findtree`: the files found.
    #[serde(deserialize_with = "bounded::<_, Item, MAX_TREE_ITEMS>")]
    pub items: Option<Vec<Item>>,
    /// `findtree`: `1` when the walk finished.
    pub done: Option<u64>,
    /// `findtree`: regular files walked through.
    pub seen: Option<u64>,
    /// `tree`: how many entry records the data holds.
    pub count: Option<u64>,
    /// `id`: the user id.
    pub uid: u64,
    /// `id`: the group id.
    pub gid: u64,
}

impl Head {
    /// A header of an error of kind `e`.
    pub fn error(e: &str) -> Self {
        Self {
            e: Some(e.to_owned()),
            ..Self::default()
        }
    }

    /// An `os` error with its errno and message.
    pub fn os(errno: i64, msg: impl Into<String>) -> Self {
        Self {
            errno,
            msg: Some(msg.into()),
            ..Self::error("os")
        }
    }
}

/// One directory entry of a listing.
#[derive(Debug, Deserialize)]
pub(crate) struct Entry {
    /// The name (lossily UTF-8).
    pub name: String,
    /// Its kind (`f`, `d`, `l`, anything else).
    #[serde(default)]
    pub k: EntryKind,
    /// Its size.
    #[serde(default)]
    pub s: u64,
    /// Its modification time in nanoseconds since the epoch.
    #[serde(default)]
    pub m: Option<i64>,
}

/// The kind of an entry, as one byte in memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum EntryKind {
    /// A regular file.
    #[serde(rename = "f")]
    File,
    /// A directory.
    #[serde(rename = "d")]
    Dir,
    /// A symlink.
    #[serde(rename = "l")]
    Symlink,
    /// Anything else.
    #[default]
    #[serde(other)]
    Other,
}

/// A line holding the needle: `[line number, length, terminated (0/1), bytes of it kept]`.
pub(crate) type MatchRow = [u64; 4];

/// One file of a tree search.
#[derive(Debug, Deserialize)]
pub(crate) struct Item {
    /// Its path.
    pub p: String,
    /// Set: too large to search.
    #[serde(default)]
    pub big: Option<u64>,
    /// Its whole content's length (a search without a needle).
    #[serde(default)]
    pub c: Option<u64>,
    /// Its lines holding the needle.
    #[serde(default, deserialize_with = "bounded::<_, MatchRow, MAX_MATCHES>")]
    pub ms: Option<Vec<MatchRow>>,
}

/// An array of at most `N` items, refused as soon as it holds one more.
fn bounded<'de, D, T, const N: usize>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an array of at most {N} items")
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The size hint is the sender's claim: never reserved from.
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == N {
                    return Err(serde::de::Error::custom(format!(
                        "more than {N} items in an array"
                    )));
                }
                out.push(item);
            }
            Ok(Some(out))
        }
    }

    d.deserialize_any(Bounded::<T, N>(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_into_their_fields_and_skip_unknown_ones() {
        let h: Head = serde_json::from_str(
            r#"{"n":3,"entries":[{"name":"a","k":"d","s":4,"m":-5},{"name":"b","k":"?"}],"zzz":[[[1]]]}"#,
        )
        .unwrap();
        assert_eq!(h.n, 3);
        let es = h.entries.unwrap();
        assert_eq!((es[0].k, es[0].s, es[0].m), (EntryKind::Dir, 4, Some(-5)));
        assert_eq!(es[1].k, EntryKind::Other);
        let h: Head =
            serde_json::from_str(r#"{"r":[{"e":"later"},{"l":2},{"ms":[[1,2,1,2]]}]}"#).unwrap();
        let r = h.r.unwrap();
        assert_eq!(r[0].e.as_deref(), Some("later"));
        assert_eq!(r[1].l, 2);
        assert_eq!(r[2].ms.as_deref(), Some(&[[1, 2, 1, 2]][..]));
    }

    #[test]
    fn arrays_past_their_bound_and_wrong_types_are_refused() {
        let many = format!(
            "{{\"r\":[{}]}}",
            vec!["{}"; MAX_BATCH_RESULTS + 1].join(",")
        );
        assert!(serde_json::from_str::<Head>(&many).is_err());
        let ok = format!("{{\"r\":[{}]}}", vec!["{}"; MAX_BATCH_RESULTS].join(","));
        assert_eq!(
            serde_json::from_str::<Head>(&ok).unwrap().r.unwrap().len(),
            MAX_BATCH_RESULTS
        );
        for bad in [
            r#"{"n":-1}"#,
            r#"{"n":1e300}"#,
            r#"{"ms":[[1,2,3]]}"#,
            r#"{"entries":[{}]}"#,
            r#"{"r":{}}"#,
        ] {
            assert!(serde_json::from_str::<Head>(bad).is_err(), "{bad}");
        }
        // Nesting is bounded by the parser itself.
        let deep = format!("{}{}", "{\"r\":[".repeat(200), "]}".repeat(200));
        assert!(serde_json::from_str::<Head>(&deep).is_err());
    }
}
