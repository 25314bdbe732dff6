//! The domain's records and words: a task as producers write it, the
//! result, the receipt, the heartbeat, the dead letter and the listener's
//! event (hookwatch(5)), and the fixed vocabularies they use (statuses,
//! dead-letter reasons, failure classes, event kinds) as enums. A word is
//! spelled once, by its enum's `as_str`, and every list of them (a
//! metric's labels, a `--reason` filter) comes from the enum.

pub mod agent_options;
pub mod dead_letter;
pub mod event;
pub mod failure;
pub mod heartbeat;
pub mod instances;
pub mod result;
pub mod task;

/// A vocabulary of the spool: a fixed set of words with one spelling each.
pub trait Word: Copy + Sized + 'static {
    /// Every word, in the order lists show them.
    const ALL: &'static [Self];

    fn as_str(self) -> &'static str;

    /// The word spelled `s`, if it is one.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|w| w.as_str() == s)
    }

    /// This word's position in `ALL`: an index into per-word counters.
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|w| w.as_str() == self.as_str())
            .expect("every word is in ALL")
    }
}

/// Implements `Word` and serde for an enum of unit variants, each with its
/// spelling; unknown spellings do not deserialize.
macro_rules! words {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $crate::model::Word for $name {
            const ALL: &'static [Self] = &[$($name::$variant,)*];

            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                $crate::model::Word::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$name as $crate::model::Word>::parse(&s).ok_or_else(|| {
                    let all: Vec<&str> = <$name as $crate::model::Word>::ALL
                        .iter()
                        .map(|w| w.as_str())
                        .collect();
                    serde::de::Error::custom(format!("unknown {} {s:?}, not one of {}", stringify!($name), all.join(", ")))
                })
            }
        }
    };
}
pub(crate) use words;
