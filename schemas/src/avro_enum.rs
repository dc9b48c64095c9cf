//! The shape shared by every enum that mirrors an Avro enum.
//!
//! Each enum is declared once with [`avro_enum!`](crate::avro_enum!): the variants, in the order
//! of the Avro `symbols`, and their symbol text. The macro derives `as_str`, `FromStr` (an error
//! that names the allowed values), `Display`, and serde as the snake_case symbol, so the same type
//! serves Avro and the JSON API. A test checks every enum against its `.avsc`.

/// An enum whose variants are the symbols of an Avro enum, in order.
pub trait AvroEnum: Copy + Sized + 'static {
    /// Avro name of the enum (without namespace), e.g. `Modality`.
    const AVRO_NAME: &'static str;
    /// The Avro symbols, in schema order; the index of a symbol is its wire value.
    const SYMBOLS: &'static [&'static str];
    /// Position of this symbol in [`Self::SYMBOLS`] (the Avro wire value).
    fn index(self) -> u32;
    /// The variant at an Avro wire index, `None` when out of range.
    fn from_index(index: u32) -> Option<Self>;
    /// The symbol text.
    fn symbol(self) -> &'static str;
}

/// A string that is not one of an enum's symbols.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {type_name} {value:?}; allowed values: {}", allowed.join(", "))]
pub struct UnknownSymbol {
    /// The enum that was parsed, e.g. `Modality`.
    pub type_name: &'static str,
    /// The rejected input.
    pub value: String,
    /// Every accepted value.
    pub allowed: &'static [&'static str],
}

/// Declares an enum mirroring an Avro enum, with `as_str`, `FromStr`, `Display`, serde and
/// [`AvroEnum`].
#[macro_export]
macro_rules! avro_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $symbol:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        impl $name {
            /// Every variant, in Avro symbol order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant ),+ ];

            /// The Avro symbol (also the JSON text).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $symbol ),+
                }
            }
        }

        impl $crate::avro_enum::AvroEnum for $name {
            const AVRO_NAME: &'static str = stringify!($name);
            const SYMBOLS: &'static [&'static str] = &[ $( $symbol ),+ ];

            fn index(self) -> u32 {
                self as u32
            }

            fn from_index(index: u32) -> Option<Self> {
                Self::ALL.get(usize::try_from(index).ok()?).copied()
            }

            fn symbol(self) -> &'static str {
                self.as_str()
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::avro_enum::UnknownSymbol;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $( $symbol => Ok($name::$variant), )+
                    _ => Err($crate::avro_enum::UnknownSymbol {
                        type_name: stringify!($name),
                        value: text.to_owned(),
                        allowed: <$name as $crate::avro_enum::AvroEnum>::SYMBOLS,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct SymbolVisitor;
                impl ::serde::de::Visitor<'_> for SymbolVisitor {
                    type Value = $name;
                    fn expecting(&self, formatter: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        write!(formatter, "one of: {}", <$name as $crate::avro_enum::AvroEnum>::SYMBOLS.join(", "))
                    }
                    fn visit_str<E: ::serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        text.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(SymbolVisitor)
            }
        }
    };
}
